"""pipelines.sources: discovery (local, glob, S3 on a real loopback endpoint) and safe archive extraction."""

from __future__ import annotations

import io
import os
import tarfile
import zipfile

import pytest

from pipelines import sources
from pipelines.sources import UnsafeArchive, discover, kind_of, safe_extract
from tests.crfgan.test_io import CT, DATA, DICOM, FLAIR, needs_data


@pytest.mark.parametrize("name, kind", [
    ("a/x.nii.gz", "file"), ("x.NII", "file"), ("v.mha", "file"), ("v.nrrd", "file"), ("a.zip", "archive"),
    ("a.tar.gz", "archive"), ("a.tgz", "archive"), ("s/CT.1.2.840.16573", "dicom"), ("s/IM0001", "dicom"),
    ("s/x.dcm", "dicom"), ("README.md", None), ("meta.json", None), (".DS_Store", None),
])
def test_kind_of(name, kind):
    assert kind_of(name) == kind


@needs_data
def test_discover_local_groups_dicom_and_skips_readme():
    units = discover([str(DATA)])
    by_kind = {k: [u for u in units if u["kind"] == k] for k in ("file", "dicom", "archive")}
    assert len(by_kind["file"]) == 4 and len(by_kind["dicom"]) == 1 and not by_kind["archive"]
    d = by_kind["dicom"][0]
    assert d["uri"] == str(DICOM) and len(d["files"]) == 20
    assert d["size"] == sum(f.stat().st_size for f in DICOM.iterdir())
    assert [u["uri"] for u in discover([str(DATA / "*" / "*.nii.gz")])] == sorted(
        str(p) for p in DATA.glob("*/*.nii.gz"))
    with pytest.raises(FileNotFoundError, match="matches no file"):
        discover([str(DATA / "nothing-here")])


def test_links_are_followed_only_to_files_inside_the_input(tmp_path):
    top, elsewhere = tmp_path / "in", tmp_path / "elsewhere"
    (top / "sub").mkdir(parents=True)
    elsewhere.mkdir()
    (top / "a.nii.gz").write_bytes(b"a")
    (elsewhere / "b.nii.gz").write_bytes(b"b")
    (top / "sub" / "inside.nii.gz").symlink_to(top / "a.nii.gz")
    (top / "outside.nii.gz").symlink_to(elsewhere / "b.nii.gz")
    (top / "dangling.nii.gz").symlink_to(top / "nope.nii.gz")
    (top / "loop").symlink_to(top, target_is_directory=True)
    units = {u["uri"].rsplit("/", 1)[-1]: u for u in discover([str(top)])}
    assert units["a.nii.gz"]["kind"] == "file" and units["inside.nii.gz"]["kind"] == "file"
    assert {k: u["reason"].split(" (")[0] for k, u in units.items() if u["kind"] == "refused"} == {
        "outside.nii.gz": "symbolic link that points outside the input folder: not followed",
        "dangling.nii.gz": "dangling symbolic link",
        "loop": "symbolic link to a folder: not followed"}
    # the input itself may be a link: the user named it
    (tmp_path / "named").symlink_to(top, target_is_directory=True)
    assert {u["uri"].rsplit("/", 1)[-1] for u in discover([str(tmp_path / "named")]) if u["kind"] == "file"} == {
        "a.nii.gz", "inside.nii.gz"}


def _zip(path, members):
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)


def _tar(path, members, links=()):
    with tarfile.open(path, "w:gz") as t:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
        for name, target in links:
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            t.addfile(info)


@pytest.mark.parametrize("maker, members, links, message", [
    (_zip, {"ok.nii": b"x", "../x": b"evil"}, (), "'..'"),
    (_zip, {"/tmp/crfgan-abs-evil": b"evil"}, (), "absolute path"),
    (_tar, {"ok.nii": b"x", "../x": b"evil"}, (), "'..'"),
    (_tar, {"/tmp/crfgan-abs-evil": b"evil"}, (), "absolute path"),
    (_tar, {"ok.nii": b"x"}, [("link", "../../etc/passwd")], "links outside"),
    (_tar, {"ok.nii": b"x"}, [("link", "/etc/passwd")], "links outside"),
])
def test_unsafe_archives_refused_nothing_written(tmp_path, maker, members, links, message):
    arc = tmp_path / ("a.zip" if maker is _zip else "a.tar.gz")
    maker(arc, members, *((links,) if maker is _tar else ()))
    dest = tmp_path / "deep" / "dest"
    before = set(os.listdir(tmp_path))
    with pytest.raises(UnsafeArchive, match=message):
        safe_extract(str(arc), str(dest))
    assert not dest.exists() or os.listdir(dest) == []
    assert set(os.listdir(tmp_path)) == before | {"deep"} and not (tmp_path / "x").exists()
    assert not os.path.exists("/tmp/crfgan-abs-evil")


def test_safe_archive_extracted_inside(tmp_path):
    _tar(tmp_path / "a.tar.gz", {"sub/a.nii": b"1", "b.nii": b"22"}, [("inner", "b.nii")])
    files = safe_extract(str(tmp_path / "a.tar.gz"), str(tmp_path / "d"))
    assert sorted(os.path.relpath(f, tmp_path / "d") for f in files) == ["b.nii", "sub/a.nii"]
    assert not (tmp_path / "d" / "inner").exists()  # links inside are allowed but not materialised
    with pytest.raises(UnsafeArchive, match="not a readable zip or tar"):
        (tmp_path / "junk.zip").write_bytes(b"not an archive")
        safe_extract(str(tmp_path / "junk.zip"), str(tmp_path / "e"))


@needs_data
def test_discover_s3_prefix_and_glob(s3_server):
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.create_bucket(Bucket="scans-src")
    s3.upload_file(str(CT), "scans-src", "coll/ct/example_ct.nii.gz")
    s3.upload_file(str(FLAIR), "scans-src", "coll/mri/FLAIR.nii.gz")
    for f in sorted(DICOM.iterdir())[:3]:
        s3.upload_file(str(f), "scans-src", f"coll/dicom/{f.name}")
    s3.put_object(Bucket="scans-src", Key="coll/README.md", Body=b"hi")
    units = discover(["s3://scans-src/coll"], endpoint=s3_server)
    assert [(u["kind"], u["uri"]) for u in units] == [
        ("file", "s3://scans-src/coll/ct/example_ct.nii.gz"), ("dicom", "s3://scans-src/coll/dicom"),
        ("file", "s3://scans-src/coll/mri/FLAIR.nii.gz")]
    assert units[0]["size"] == CT.stat().st_size and len(units[1]["files"]) == 3
    only = discover(["s3://scans-src/coll/*/*.nii.gz"])  # endpoint from AWS_ENDPOINT_URL
    assert [u["uri"] for u in only] == ["s3://scans-src/coll/ct/example_ct.nii.gz",
                                        "s3://scans-src/coll/mri/FLAIR.nii.gz"]
    assert sources.read_bytes(only[1]["uri"]) == FLAIR.read_bytes()


def test_unit_key_changes_when_a_file_is_replaced_in_place_with_the_same_size(tmp_path, s3_server):
    """Local: the mtime is in the key; S3: the ETag. Same path, same size, other bytes → another key."""
    import boto3

    f = tmp_path / "a.nii"
    f.write_bytes(b"A" * 1000)
    before = sources.unit_key(discover([str(f)])[0], "h")
    f.write_bytes(b"B" * 1000)
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a clock-independent newer mtime
    assert sources.unit_key(discover([str(f)])[0], "h") != before
    assert sources.unit_key(discover([str(f)])[0], "h") == sources.unit_key(discover([str(f)])[0], "h")

    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.create_bucket(Bucket="replaced")
    s3.put_object(Bucket="replaced", Key="in/a.nii", Body=b"A" * 1000)
    s3.put_object(Bucket="replaced", Key="in/dicom/IM1", Body=b"x" * 10)
    u1 = {u["uri"]: u for u in discover(["s3://replaced/in"], endpoint=s3_server)}
    s3.put_object(Bucket="replaced", Key="in/a.nii", Body=b"B" * 1000)
    s3.put_object(Bucket="replaced", Key="in/dicom/IM1", Body=b"y" * 10)
    u2 = {u["uri"]: u for u in discover(["s3://replaced/in"], endpoint=s3_server)}
    for uri in ("s3://replaced/in/a.nii", "s3://replaced/in/dicom"):
        assert u1[uri]["size"] == u2[uri]["size"] and u1[uri]["version"]
        assert sources.unit_key(u1[uri], "h") != sources.unit_key(u2[uri], "h")


# ---------------------------------------------------------------------------------------------------- phantoms
def test_phantom_input_becomes_one_unit_per_volume_named_by_its_canonical_uri():
    units = discover(["phantom://3?size=32&seed=5", "phantom://2?seed=5&size=32"])  # the second adds nothing new
    assert [u["uri"] for u in units] == [f"phantom://volume/{i}?size=32&seed=5" for i in range(3)]
    assert {u["kind"] for u in units} == {"phantom"} and all(u["version"].startswith("phantom-v") for u in units)


@pytest.mark.parametrize("uri, message", [
    ("phantom://0?size=32&seed=0", "count N must be >= 1"),
    ("phantom://4?size=0&seed=0", "size must be in [16, 512]"),
    ("phantom://4?size=32&sed=0", "unknown key 'sed'"),
])
def test_bad_phantom_query_is_an_error_before_ray_starts(uri, message, monkeypatch, capsys):
    import argparse

    from pipelines import preprocess, runtime

    def no_ray():
        raise AssertionError("Ray was started for a bad phantom:// input")

    monkeypatch.setattr(runtime, "ensure_ray", no_ray)
    p = argparse.ArgumentParser()
    preprocess.add_arguments(p)
    rc = preprocess.main(p.parse_args(["--input", uri, "--output", "/nonexistent/out", "--config", "tiny"]))
    err = capsys.readouterr().err
    assert rc == 2 and message in err and uri in err


def test_phantom_field_of_view_must_fit_the_config_cube(monkeypatch, capsys):
    """At the default 1 mm a 64-voxel phantom spans 64 mm; ct64's cube is 64 × 6 mm: it would be resampled into an
    11-voxel blob in air. Refused before Ray, with the spacing that fits; the fitting URI passes."""
    import argparse

    from crfgan.config import load_config
    from pipelines import preprocess, runtime
    from pipelines.sources import InputError, check_inputs

    def no_ray():
        raise AssertionError("Ray was started for a phantom that does not fit the cube")

    monkeypatch.setattr(runtime, "ensure_ray", no_ray)
    p = argparse.ArgumentParser()
    preprocess.add_arguments(p)
    rc = preprocess.main(p.parse_args(["--input", "phantom://4?size=64&seed=0", "--output", "/nonexistent/out",
                                       "--config", "ct64"]))
    err = capsys.readouterr().err
    assert rc == 2 and "phantom://4?size=64&seed=0" in err and "&spacing=6" in err and "17 %" in err
    cfg = load_config("ct64")
    check_inputs(["phantom://4?size=64&seed=0&spacing=6", "phantom://4?size=32&seed=0&spacing=12"], cfg)
    with pytest.raises(InputError, match="cut off"):
        check_inputs(["phantom://4?size=64&seed=0&spacing=20"], cfg)
    check_inputs(["phantom://4?size=64&seed=0"], load_config("ct64", ["data.spacing_mm=0"]))  # own spacing: fine
    check_inputs(["phantom://4?size=64&seed=0"], load_config("ct64", ["data.fit=resize"]))  # resized to the cube


def test_preprocess_phantoms_into_shards_with_a_factor_sidecar(tmp_path, ray_local):
    import argparse
    import json

    import numpy as np

    from crfgan.phantom import measure, to_hu
    from crfgan.shards import read_volumes
    from pipelines import preprocess

    p = argparse.ArgumentParser()
    preprocess.add_arguments(p)
    out = tmp_path / "shards"
    rc = preprocess.main(p.parse_args(["--input", "phantom://4?size=32&seed=0", "--output", str(out),
                                       "--config", "tiny"]))
    assert rc == 0
    rows = list(read_volumes(out, split=None))
    assert len(rows) == 4 and {r["modality"] for r in rows} == {"ct"}
    assert {r["source_uri"] for r in rows} == {f"phantom://volume/{i}?size=32&seed=0" for i in range(4)}
    assert all(r["spacing"] == [1.0, 1.0, 1.0] and r["volume"].shape == (32, 32, 32) for r in rows)
    manifest = json.loads((out / "manifest.json").read_text())
    sidecar = json.loads((out / "phantom_factors.json").read_text())["volumes"]
    assert manifest["phantom_factors_path"] == str(out / "phantom_factors.json")
    by_id = {v["volume_id"]: v for v in sidecar}
    assert set(by_id) == {r["volume_id"] for r in rows}
    for r in rows:
        f = by_id[r["volume_id"]]
        assert f["source_uri"] == r["source_uri"] and f["split"] == r["split"]
        assert f["factors"]["index"] == int(r["source_uri"].split("/")[3].split("?")[0])
        # what the factors say is what a user measures on the shard (window-clipped, float16, back to HU)
        lung = measure(to_hu(r["volume"]))["lung_volume_fraction"]
        assert abs(lung - f["factors"]["lung_volume_fraction"]) < 0.03, (lung, f["factors"]["lung_volume_fraction"])
    assert len({round(float(np.abs(r["volume"]).mean()), 4) for r in rows}) == 4  # four distinct volumes
