"""The Ray Data preprocess pipeline end to end: real scans + every kind of bad input, rerun, threshold, S3."""

from __future__ import annotations

import argparse
import hashlib
import io
import shutil
import tarfile
import zipfile

import numpy as np
import pyarrow.parquet as pq
import pytest

from crfgan.shards import read_manifest, read_volumes
from pipelines import preprocess
from tests.crfgan.test_io import CT, DICOM, FLAIR, copy_series_with_uid, make_bad_inputs, needs_data

pytestmark = needs_data


def cli(*argv) -> int:
    p = argparse.ArgumentParser()
    preprocess.add_arguments(p)
    return preprocess.main(p.parse_args(list(argv)))


def md5s(folder):
    return {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in sorted((folder / "shards").iterdir())}


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    d = tmp_path_factory.mktemp("collection")
    shutil.copy(CT, d / "ct.nii.gz")
    shutil.copy(FLAIR, d / "flair.nii.gz")
    shutil.copytree(DICOM, d / "mixed")
    copy_series_with_uid(DICOM, d / "mixed", "1.2.3.4.5")  # two series in one folder: two volumes
    copy_series_with_uid(DICOM, d / "gap", "1.2.3.9", skip={7})  # missing slice
    make_bad_inputs(d / "bad")
    with zipfile.ZipFile(d / "good.zip", "w") as z:
        z.write(FLAIR, "inner/FLAIR.nii.gz")
    with zipfile.ZipFile(d / "evil.zip", "w") as z:
        z.write(FLAIR, "ok.nii.gz")
        z.writestr("../x", b"evil")
    with tarfile.open(d / "evil.tar.gz", "w:gz") as t:
        info = tarfile.TarInfo("/tmp/crfgan-preprocess-evil")
        info.size = 4
        t.addfile(info, io.BytesIO(b"evil"))
    elsewhere = tmp_path_factory.mktemp("elsewhere")  # links that leave the input are never read
    shutil.copy(FLAIR, elsewhere / "secret.nii.gz")
    (d / "links").mkdir()
    (d / "links" / "outside.nii.gz").symlink_to(elsewhere / "secret.nii.gz")
    (d / "links" / "dangling.nii.gz").symlink_to(d / "links" / "gone.nii.gz")
    (d / "links" / "folder").symlink_to(elsewhere, target_is_directory=True)
    return d


EXPECTED_ERRORS = {  # file name → (stage, part of the reason)
    "zero.nii.gz": ("read", "is empty (0 bytes)"),
    "truncated.nii.gz": ("read", "truncated or corrupt"),
    "random.nii.gz": ("read", "is not a NIfTI file"),
    "flat2d.nii.gz": ("read", "is a 2D image"),
    "series4d.nii.gz": ("read", "4D inputs are refused"),
    "huge.nii": ("read", "header claims 1,073,741,824 voxels"),
    "mostly_nan.nii.gz": ("prepare", "are NaN/Inf"),
    "thin.nii.gz": ("prepare", "is too thin for a 3D scan: [64, 64, 3] voxels"),
    "spacing80.nii.gz": ("prepare", "voxel spacing [80.0, 80.0, 80.0] mm is implausible"),
    "pixdim0.nii.gz": ("read", "header voxel spacing (pixdim) [0.0, 1.0, 1.0]"),
    "ct_perfusion_rgb.nii.gz": ("read", "is not a scalar intensity"),
    "gap": ("read", "missing 1 slice(s)"),
    "evil.zip": ("extract", "points outside the extraction folder"),
    "evil.tar.gz": ("extract", "absolute path"),
    "outside.nii.gz": ("input", "points outside the input folder"),
    "dangling.nii.gz": ("input", "dangling symbolic link"),
    "folder": ("input", "symbolic link to a folder"),
}


@pytest.fixture(scope="module")
def first_run(collection, tmp_path_factory, ray_local):
    out = tmp_path_factory.mktemp("shards")
    rc = cli("--input", str(collection), "--output", str(out), "--config", "tiny", "data.max_error_fraction=0.9",
             "data.val_fraction=0.3", "data.keep_staging=true")
    return rc, out, md5s(out)


def test_bad_inputs_become_error_rows_and_valid_volumes_are_kept(first_run, collection):
    rc, out, _ = first_run
    m = read_manifest(str(out))
    assert rc == 0 and m["volumes_ok"] == 5 and m["volumes_failed"] == len(EXPECTED_ERRORS)
    errors = pq.read_table(out / "errors.parquet").to_pylist()
    got = {e["source_uri"].rsplit("/", 1)[-1]: e for e in errors}
    assert set(got) == set(EXPECTED_ERRORS)
    for name, (stage, reason) in EXPECTED_ERRORS.items():
        assert got[name]["stage"] == stage and reason in got[name]["reason"], got[name]
    assert not (collection / "x").exists() and not (collection.parent / "x").exists()
    import os
    assert not os.path.exists("/tmp/crfgan-preprocess-evil")
    sources = sorted(r["source_uri"] for s in ("train", "val") for r in read_volumes(out, s))
    assert sources == sorted([str(collection / "ct.nii.gz"), str(collection / "flair.nii.gz"),
                              f"{collection / 'mixed'}#series=1.2.3.4.5", f"{collection / 'mixed'}#series=<empty>",
                              f"{collection / 'good.zip'}!/inner/FLAIR.nii.gz"])


def test_manifest_and_shard_contents(first_run):
    _, out, _ = first_run
    m = read_manifest(str(out))
    assert m["config_hash"] and m["package_version"] == "0.1.0" and m["errors_path"] == f"{out}/errors.parquet"
    assert sum(m["counts"]["split"].values()) == 5 and m["counts"]["modality"] == {"ct": 3, "mri": 2}
    assert m["volume_shape"] == [32, 32, 32] and m["elapsed_s"] > 0
    assert sum(s["volumes"] for s in m["shards"]) == 5 and m["bytes_out"] == sum(s["bytes"] for s in m["shards"])
    rows = list(read_volumes(out, "train")) + list(read_volumes(out, "val"))
    for r in rows:
        v = r["volume"]
        assert v.shape == (32, 32, 32) and v.dtype == np.float32 and -1 <= v.min() and v.max() <= 1
        assert "low_res" not in r and r["slab_depth"] == 4
        assert r["split"] in ("train", "val") and r["image_size"] == 32
    flair = next(r for r in rows if r["source_uri"].endswith("flair.nii.gz"))
    zipped = next(r for r in rows if r["source_uri"].endswith("inner/FLAIR.nii.gz"))
    assert np.array_equal(flair["volume"], zipped["volume"])  # same scan through an archive: same cube
    assert (flair["volume_id"], flair["split"]) == (zipped["volume_id"], zipped["split"])  # same id, so no leak


def test_rerun_skips_finished_and_keeps_shards(first_run, collection):
    rc, out, before = first_run
    rc2 = cli("--input", str(collection), "--output", str(out), "--config", "tiny", "data.max_error_fraction=0.9",
              "data.val_fraction=0.3", "data.keep_staging=true")
    m = read_manifest(str(out))
    # every unit was finished; the 3 refused links are never read, so never "finished": each gets its error row again
    assert rc2 == rc == 0 and m["units_skipped"] == m["inputs"] - 3 == 18
    assert m["staging_kept"] and m["staging_bytes"] > 0
    assert md5s(out) == before


def test_error_fraction_exits_non_zero(collection, tmp_path, ray_local, capsys):
    rc = cli("--input", str(collection / "bad"), "--input", str(collection / "ct.nii.gz"),
             "--output", str(tmp_path / "o"), "--config", "tiny")
    err = capsys.readouterr().err
    assert rc == 1
    assert "11 of 12 inputs failed (92% > data.max_error_fraction=50%)" in err
    assert f"{tmp_path / 'o'}/errors.parquet" in err


def test_a_missing_input_or_unusable_output_is_refused_before_ray_starts(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    code = ("import sys, ray; from pipelines.cli import main; rc = main(sys.argv[1:]); "
            "print('RAY', ray.is_initialized()); sys.exit(rc)")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    for inp, out, expected in [(tmp_path / "missing", tmp_path / "o", "matches no file or folder"),
                               (tmp_path / "none-*.nii.gz", tmp_path / "o", "matches no file or folder"),
                               (CT, a_file / "o", f"{a_file} is a file, not a folder")]:
        p = subprocess.run([sys.executable, "-c", code, "preprocess", "--input", str(inp), "--output", str(out)],
                           cwd=Path(__file__).resolve().parents[2], env=env, capture_output=True, text=True, timeout=300)
        assert p.returncode == 2 and expected in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
        assert "RAY False" in p.stdout
    assert not (tmp_path / "o").exists()


def test_unknown_override_is_a_clear_error(tmp_path, capsys):
    assert cli("--input", str(tmp_path), "--output", str(tmp_path / "o"), "--config", "tiny", "data.fitt=x") == 2
    assert "did you mean 'data.fit'" in capsys.readouterr().err


def test_s3_in_and_out(s3_server, ray_local, tmp_path, fake_aws_env, capfd):
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.create_bucket(Bucket="scans")
    s3.upload_file(str(CT), "scans", "in/ct.nii.gz")
    for f in sorted(DICOM.iterdir()):
        s3.upload_file(str(f), "scans", f"in/dicom/{f.name}")
    with zipfile.ZipFile(tmp_path / "mri.zip", "w") as z:
        z.write(FLAIR, "FLAIR.nii.gz")
    s3.upload_file(str(tmp_path / "mri.zip"), "scans", "in/mri.zip")
    rc = cli("--input", "s3://scans/in", "--output", "s3://scans/out", "--config", "tiny")
    m = read_manifest("s3://scans/out")
    assert rc == 0 and m["volumes_ok"] == 3 and m["volumes_failed"] == 0
    assert m["errors_path"] == "s3://scans/out/errors.parquet"
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="scans", Prefix="out/")["Contents"])
    assert "out/manifest.json" in keys and all(not k.rsplit("/", 1)[-1].startswith(".tmp") for k in keys)
    rows = [r for s in ("train", "val") for r in read_volumes("s3://scans/out", s)]
    assert sorted(r["source_uri"] for r in rows) == ["s3://scans/in/ct.nii.gz", "s3://scans/in/dicom",
                                                     "s3://scans/in/mri.zip!/FLAIR.nii.gz"]
    assert all(r["volume"].shape == (32, 32, 32) for r in rows)

    # Smaller shards on a rerun: one volume per shard. Then back to one shard per split: the shards of the older
    # plan that the new manifest no longer lists are deleted from the bucket, and the reader sees each volume once.
    def shard_keys():  # pyarrow leaves an empty "out/shards/" folder marker when it deletes: not a shard
        objs = s3.list_objects_v2(Bucket="scans", Prefix="out/shards/")["Contents"]
        return sorted(o["Key"] for o in objs if not o["Key"].endswith("/"))

    assert cli("--input", "s3://scans/in", "--output", "s3://scans/out", "--config", "tiny",
               "data.shard_target_mb=0.001") == 0
    assert len(shard_keys()) == 3
    assert cli("--input", "s3://scans/in", "--output", "s3://scans/out", "--config", "tiny") == 0
    listed = sorted(f"out/{s['path']}" for s in read_manifest("s3://scans/out")["shards"])
    assert shard_keys() == listed and len(listed) < 3
    assert sum(1 for s in ("train", "val") for _ in read_volumes("s3://scans/out", s)) == 3

    secrets = [fake_aws_env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")]
    out = "".join(capfd.readouterr())
    assert "preprocess: 3 volumes" in out and not [x for x in secrets if x in out]
    for k in ("out/manifest.json", "out/errors.parquet"):
        body = s3.get_object(Bucket="scans", Key=k)["Body"].read()
        assert not [x for x in secrets if x.encode() in body], k


def test_an_input_whose_worker_dies_becomes_an_error_row(ray_local, tmp_path):
    """The worker running one input is SIGKILLed (as a native crash or the OOM killer would); with no retries left
    the input becomes a ``worker`` error row and every other input is kept. Ray Data's default would retry forever."""
    import threading
    import time

    import psutil

    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(4):
        shutil.copy(CT, inputs / f"ct{i}.nii.gz")
    killed, stop = [], threading.Event()

    def kill_first_map_worker():
        deadline = time.monotonic() + 120
        while not stop.is_set() and time.monotonic() < deadline:
            for p in psutil.Process().children(recursive=True):  # only this session's Ray
                try:
                    if p.cmdline() and p.cmdline()[0].startswith("ray::") and "_map_unit" in p.cmdline()[0]:
                        p.kill()
                        killed.append(p.pid)
                        return
                except psutil.Error:
                    continue
            time.sleep(0.005)

    t = threading.Thread(target=kill_first_map_worker, daemon=True)
    t.start()
    try:
        rc = cli("--input", str(inputs), "--output", str(tmp_path / "o"), "--config", "ct128", "data.task_retries=0",
                 "data.max_error_fraction=0.5")
    finally:
        stop.set()
        t.join(timeout=10)
    assert killed, "no map task was seen running"
    m = read_manifest(str(tmp_path / "o"))
    errors = pq.read_table(tmp_path / "o" / "errors.parquet").to_pylist()
    assert rc == 0 and m["volumes_ok"] == 3 and m["volumes_failed"] == 1
    assert [(e["stage"], e["reason"]) for e in errors] == [("worker", "the Ray task processing it failed")]
    assert errors[0]["source_uri"].startswith(str(inputs / "ct"))
