"""Preprocess storage hygiene and stale inputs: staging bounded and counted, in-place replacements noticed, at
least one val volume, the user's umask on every output, S3 headers checked before the download, failing files named."""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import stat

import nibabel as nib
import numpy as np
import pyarrow.parquet as pq
import pytest

from crfgan.shards import read_manifest, read_volumes
from pipelines import preprocess, sources
from tests.crfgan.test_io import CT, FLAIR, needs_data

pytestmark = needs_data


def cli(*argv) -> int:
    p = argparse.ArgumentParser()
    preprocess.add_arguments(p)
    return preprocess.main(p.parse_args(list(argv)))


@pytest.fixture
def two_scans(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    (d / "ct.nii").write_bytes(gzip.decompress(CT.read_bytes()))  # uncompressed: voxels can change in place
    shutil.copy(FLAIR, d / "flair.nii.gz")
    return d


def test_staging_is_removed_by_default_counted_and_other_hashes_purged(two_scans, tmp_path, ray_local):
    out = tmp_path / "out"
    assert cli("--input", str(two_scans), "--output", str(out), "--config", "tiny") == 0
    m = read_manifest(str(out))
    assert m["staging_bytes"] > 0 and m["staging_kept"] is False
    assert not (out / "_staging").exists()
    # kept: one folder per data hash; a run with other data settings purges the older one
    assert cli("--input", str(two_scans), "--output", str(out), "--config", "tiny", "data.keep_staging=true") == 0
    first = {p.name for p in (out / "_staging").iterdir()}
    assert cli("--input", str(two_scans), "--output", str(out), "--config", "tiny", "data.keep_staging=true",
               "data.trim_empty_slices=false") == 0
    second = {p.name for p in (out / "_staging").iterdir()}
    assert len(first) == len(second) == 1 and first != second
    m = read_manifest(str(out))
    staged = sum(f.stat().st_size for f in (out / "_staging").rglob("*.parquet"))
    assert m["staging_bytes"] == staged and m["staging_kept"] is True


def test_a_scan_replaced_in_place_with_the_same_size_is_prepared_again(two_scans, tmp_path, ray_local):
    out = tmp_path / "out"
    assert cli("--input", str(two_scans), "--output", str(out), "--config", "tiny", "data.keep_staging=true") == 0
    before = {r["source_uri"]: r["volume_id"] for s in ("train", "val") for r in read_volumes(str(out), s)}
    ct = two_scans / "ct.nii"
    size = ct.stat().st_size
    img = nib.load(str(ct))
    data = np.asarray(img.dataobj)[::-1].copy()  # the same scan flipped: other voxels, same byte size
    nib.save(nib.Nifti1Image(data, img.affine, img.header), str(ct))
    assert ct.stat().st_size == size
    st = ct.stat()
    os.utime(ct, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a clock-independent newer mtime
    assert cli("--input", str(two_scans), "--output", str(out), "--config", "tiny", "data.keep_staging=true") == 0
    m = read_manifest(str(out))
    after = {r["source_uri"]: r["volume_id"] for s in ("train", "val") for r in read_volumes(str(out), s)}
    assert m["units_skipped"] == 1  # the FLAIR only
    assert after[str(ct)] != before[str(ct)] and after[str(two_scans / "flair.nii.gz")] == before[
        str(two_scans / "flair.nii.gz")]


def test_split_holds_a_val_volume_and_outputs_get_the_umask(two_scans, tmp_path, ray_local):
    out = tmp_path / "out"
    old = os.umask(0o027)
    try:
        # 1e-9: the hash split alone puts both scans in train
        assert cli("--input", str(two_scans), "--output", str(out), "--config", "tiny",
                   "data.val_fraction=1e-9") == 0
    finally:
        os.umask(old)
    m = read_manifest(str(out))
    assert m["counts"]["split"] == {"train": 1, "val": 1}
    val = list(read_volumes(str(out), "val"))
    assert len(val) == 1 and val[0]["split"] == "val"
    val_shard = next(s["path"] for s in m["shards"] if s["split"] == "val")
    assert pq.read_table(out / val_shard, columns=["split"]).column("split").to_pylist() == ["val"]
    files = [out / "manifest.json", out / "errors.parquet", *[out / s["path"] for s in m["shards"]]]
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o640, f  # 0o666 & ~0o027, not mkstemp's 0600


def test_no_val_volume_forced_when_val_fraction_is_zero(two_scans, tmp_path, ray_local):
    out = tmp_path / "out"
    assert cli("--input", str(two_scans), "--output", str(out), "--config", "tiny", "data.val_fraction=0") == 0
    assert read_manifest(str(out))["counts"]["split"] == {"train": 2}


def test_a_dicom_error_row_names_the_failing_file(tmp_path, monkeypatch):
    """The reader is patched to fail on one named file (GDCM drops broken files before we see them, so a real series
    cannot be made to fail this way here); what is tested is that the error row carries that file, not the folder."""
    from crfgan.config import load_config
    from crfgan.io import ScanError

    folder = tmp_path / "series"
    folder.mkdir()
    bad = folder / "IM0007"
    bad.write_bytes(b"x")

    def fails(folder_, uid, label, max_voxels):
        raise ScanError(label, "DICOM file IM0007 lacks ImagePositionPatient (0020,0032)", file=str(bad))

    monkeypatch.setattr("crfgan.dicom.list_series", lambda f: {"1.2.3": [str(bad)]})
    monkeypatch.setattr("crfgan.dicom.load_dicom_series", fails)
    unit = {"uri": str(folder), "kind": "dicom", "size": 1, "files": [str(bad)], "version": "1"}
    res = preprocess.process_unit(unit, load_config("tiny"), str(tmp_path / "out"), "")
    assert [e["source_uri"] for e in res["errors"]] == [str(bad)]
    assert "ImagePositionPatient" in res["errors"][0]["reason"]


def test_s3_header_claiming_too_many_voxels_is_refused_after_a_ranged_read(s3_server, tmp_path):
    import boto3

    from crfgan.io import ScanError
    from crfgan.storage import filesystem

    hdr = nib.Nifti1Header()
    hdr.set_data_shape((2048, 2048, 2048))
    hdr.set_data_dtype(np.int16)
    raw = hdr.binaryblock + b"\0" * 4 + os.urandom(8 * 2**20)  # header + 8 MiB of body
    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.create_bucket(Bucket="ranged")
    s3.put_object(Bucket="ranged", Key="huge.nii", Body=raw)

    fs, _ = filesystem("s3://ranged/huge.nii", s3_server)
    counted = CountingFS(fs)
    with pytest.raises(ScanError, match=r"s3://ranged/huge.nii: header claims 8,589,934,592 voxels"):
        sources.read_scan_bytes("s3://ranged/huge.nii", s3_server, max_voxels=10**9, fs=counted)
    assert 0 < counted.read <= sources.HEADER_BYTES  # the 8 MiB body was never fetched
    # a plausible header: the whole object comes back
    s3.put_object(Bucket="ranged", Key="ct.nii.gz", Body=CT.read_bytes())
    assert sources.read_scan_bytes("s3://ranged/ct.nii.gz", s3_server) == CT.read_bytes()


class CountingFS:
    """The real S3 filesystem, counting the bytes its input files hand out."""

    def __init__(self, fs):
        self.fs, self.read = fs, 0

    def open_input_file(self, path):
        outer, f = self, self.fs.open_input_file(path)

        class Counting:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                f.close()

            def read(self, n=None):
                b = f.read() if n is None else f.read(n)
                outer.read += len(b)
                return b

        return Counting()
