"""crfgan.io / crfgan.dicom on the real scans in ../shared/data and on generated bad inputs."""

from __future__ import annotations

import gzip
import locale
import os
import shutil
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from crfgan.dicom import list_series, load_dicom_series
from crfgan.io import ScanError, load_scan, write_nifti

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"real scans not found at {DATA}")
CT = DATA / "ct" / "example_ct.nii.gz"
FLAIR = DATA / "mri" / "FLAIR.nii.gz"
DICOM = DATA / "ct" / "example_ct_dicom"
RGB = DATA / "bad" / "ct_perfusion_rgb.nii.gz"


def copy_series_with_uid(src: Path, dst: Path, uid: str, skip: set[int] = frozenset(), tags: dict | None = None) -> None:
    """Rewrite a DICOM series with a new SeriesInstanceUID (SimpleITK, keeping geometry and modality tags).

    GDCM's writer switches the process locale to "C" (text files then open as ASCII); it is restored after.
    """
    import SimpleITK as sitk

    saved = locale.setlocale(locale.LC_ALL)
    try:
        _copy_series(sitk, src, dst, uid, skip, tags or {})
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def _copy_series(sitk, src: Path, dst: Path, uid: str, skip, tags: dict) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    keep = ("0008|0060", "0020|0032", "0020|0037", "0028|0030", "0018|0050", "0020|0013")
    for i, f in enumerate(sorted(src.iterdir())):
        if i in skip:
            continue
        r = sitk.ImageFileReader()
        r.SetFileName(str(f))
        img = r.Execute()
        for k in list(img.GetMetaDataKeys()):
            if k not in keep:
                img.EraseMetaData(k)
        img.SetMetaData("0020|000e", uid)
        for k, v in tags.items():
            img.SetMetaData(k, v)
        w = sitk.ImageFileWriter()
        w.KeepOriginalImageUIDOn()
        w.SetFileName(str(dst / f"{uid}-{i:03d}.dcm"))
        w.Execute(img)


def make_bad_inputs(d: Path) -> dict[str, Path]:
    """Every kind of bad input that fits in a file, generated under ``d``; values are paths."""
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    out = {"zero": d / "zero.nii.gz", "truncated": d / "truncated.nii.gz", "random": d / "random.nii.gz",
           "flat2d": d / "flat2d.nii.gz", "series4d": d / "series4d.nii.gz", "huge": d / "huge.nii",
           "nan": d / "mostly_nan.nii.gz", "thin": d / "thin.nii.gz", "pixdim0": d / "pixdim0.nii.gz",
           "spacing80": d / "spacing80.nii.gz"}
    out["zero"].write_bytes(b"")
    raw = CT.read_bytes()
    out["truncated"].write_bytes(raw[: len(raw) // 2])
    out["random"].write_bytes(rng.bytes(5000))
    nib.save(nib.Nifti1Image(rng.normal(size=(20, 20)).astype(np.float32), np.eye(4)), out["flat2d"])
    nib.save(nib.Nifti1Image(rng.normal(size=(10, 10, 10, 3)).astype(np.float32), np.eye(4)), out["series4d"])
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((1024, 1024, 1024))  # 1.07e9 voxels: above data.max_voxels = 1e9
    hdr.set_data_dtype(np.int16)
    with open(out["huge"], "wb") as f:
        hdr.write_to(f)
        f.write(b"\0" * 1024)
    v = rng.normal(size=(32, 32, 32)).astype(np.float32)
    v[:16] = np.nan  # half the voxels
    nib.save(nib.Nifti1Image(v, np.eye(4)), out["nan"])
    body = np.full((64, 64, 64), -1000, np.int16)
    body[16:48, 16:48, 16:48] = 40
    nib.save(nib.Nifti1Image(body[:, :, :3], np.eye(4)), out["thin"])  # a 3-slice volume
    nib.save(nib.Nifti1Image(body, np.diag([80.0, 80.0, 80.0, 1.0])), out["spacing80"])  # 80 mm voxels
    raw = bytearray(nib.Nifti1Image(body, np.eye(4)).to_bytes())
    raw[80:84] = np.float32(0.0).tobytes()  # pixdim[1] = 0 in the file itself: nibabel would read it as 1 mm
    out["pixdim0"].write_bytes(gzip.compress(bytes(raw)))
    if RGB.exists():
        shutil.copy(RGB, d / RGB.name)
        out["rgb"] = d / RGB.name
    return out


@needs_data
def test_real_ct_nifti_is_ras_float32():
    s = load_scan(CT)
    assert s.shape == (122, 101, 112) and s.array.dtype == np.float32
    assert np.allclose(s.spacing, 3.0) and s.modality == "ct"
    assert nib.aff2axcodes(s.affine) == ("R", "A", "S")
    assert s.array.min() <= -1000 and s.meta["original_shape"] == [122, 101, 112]


@needs_data
def test_bytes_equal_path_and_mri_guess():
    a, b = load_scan(FLAIR), load_scan(FLAIR.read_bytes(), name="s3://b/FLAIR.nii.gz")
    assert a.modality == b.modality == "mri" and b.name == "s3://b/FLAIR.nii.gz"
    assert np.array_equal(a.array, b.array) and a.shape == (124, 160, 140)
    raw = gzip.decompress(FLAIR.read_bytes())  # uncompressed NIfTI bytes (what Ray's reader hands over)
    assert np.array_equal(load_scan(raw, name="x.nii").array, a.array)


@needs_data
def test_itk_mha_matches_nifti_geometry(tmp_path):
    import SimpleITK as sitk

    mha = tmp_path / "ct.mha"
    sitk.WriteImage(sitk.ReadImage(str(CT)), str(mha))
    a, b = load_scan(CT), load_scan(mha)
    assert a.shape == b.shape and np.array_equal(a.array, b.array)
    assert np.allclose(a.affine, b.affine, atol=1e-4)


@needs_data
@pytest.mark.parametrize("key, message", [
    ("zero", "is empty (0 bytes)"),
    ("truncated", "truncated or corrupt"),
    ("random", "is not a NIfTI file"),
    ("flat2d", "is a 2D image"),
    ("series4d", "4D inputs are refused"),
    ("huge", "header claims 1,073,741,824 voxels"),
    ("rgb", "is not a scalar intensity"),
    ("pixdim0", "header voxel spacing (pixdim) [0.0, 1.0, 1.0] is zero"),
])
def test_bad_inputs_name_file_and_problem(tmp_path, key, message):
    path = make_bad_inputs(tmp_path)[key]
    tracemalloc.start()
    with pytest.raises(ScanError) as e:
        load_scan(path, max_voxels=1_000_000_000)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert message in str(e.value) and str(path) in str(e.value)
    assert e.value.path == str(path)
    if key == "huge":
        assert peak < 20 * 2**20, f"refusing the 1e9-voxel header allocated {peak / 2**20:.0f} MiB"


def test_random_gzip_bytes_and_singleton_4d(tmp_path):
    with pytest.raises(ScanError, match="is not a NIfTI file"):
        load_scan(gzip.compress(os.urandom(4000)), name="junk.nii.gz")
    p = tmp_path / "one_frame.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((6, 7, 8, 1), np.float32), np.eye(4)), p)
    assert load_scan(p).shape == (6, 7, 8)


@needs_data
def test_dicom_series_and_missing_slice(tmp_path):
    s = load_scan(DICOM)
    assert s.shape == (512, 512, 20) and s.modality == "ct"
    assert np.allclose(s.spacing, [0.9765625, 0.9765625, 2.0])
    assert (s.array.min(), s.array.max()) == (-1024.0, 1839.0)
    gap = tmp_path / "gap"
    copy_series_with_uid(DICOM, gap, "1.2.3.9", skip={10})
    with pytest.raises(ScanError, match=r"missing 1 slice\(s\): gap of 4.00 mm"):
        load_scan(gap)


@needs_data
def test_enhanced_multiframe_dicom_is_named_as_such(tmp_path):
    enhanced = tmp_path / "enhanced"
    copy_series_with_uid(DICOM, enhanced, "1.2.3.11", tags={"0008|0016": "1.2.840.10008.5.1.4.1.1.2.1"})
    with pytest.raises(ScanError, match="is an enhanced CT image: enhanced multi-frame DICOM is not supported"):
        load_scan(enhanced)


def test_finite_values_beyond_float32_are_refused_without_warnings(tmp_path):
    import warnings

    arr = np.full((16, 16, 16), 1e39)
    arr[0, 0, :10] = 5.0
    p = tmp_path / "overflow.nii.gz"
    nib.save(nib.Nifti1Image(arr, np.eye(4)), p)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's cast overflow or nibabel's warning would raise here
        with pytest.raises(ScanError, match=r"4,086 of 4,096 voxels have finite values beyond float32's range") as e:
            load_scan(p)
    assert "NaN/Inf" not in str(e.value)
    ok = np.linspace(-1000, 1000, 16**3).reshape(16, 16, 16)  # float64 in range: read as before
    nib.save(nib.Nifti1Image(ok, np.eye(4)), tmp_path / "f64.nii.gz")
    assert np.allclose(load_scan(tmp_path / "f64.nii.gz").array.max(), 1000.0)


@needs_data
def test_two_series_in_one_folder(tmp_path):
    mixed = tmp_path / "mixed"
    shutil.copytree(DICOM, mixed)
    copy_series_with_uid(DICOM, mixed, "1.2.3.4.5")
    series = list_series(mixed)
    assert sorted(series) == ["", "1.2.3.4.5"] and all(len(f) == 20 for f in series.values())
    with pytest.raises(ScanError, match="holds 2 DICOM series"):
        load_scan(mixed)
    a, b = (load_dicom_series(mixed, uid) for uid in sorted(series))
    assert np.array_equal(a.array, b.array) and b.meta["series_uid"] == "1.2.3.4.5"


def test_write_nifti_atomic_with_real_affine(tmp_path):
    v = np.random.default_rng(1).normal(size=(8, 16, 32)).astype(np.float32)  # (z, y, x)
    p = write_nifti(v, (2.0, 1.0, 0.5), tmp_path / "out" / "x.nii.gz", {"descrip": "crfgan test"})
    assert os.listdir(p.parent) == ["x.nii.gz"]
    img = nib.load(p)
    assert img.shape == (32, 16, 8) and np.allclose(np.diag(img.affine)[:3], [0.5, 1.0, 2.0])
    # centred on the origin, as crfgan synthesize writes its volumes: one convention for every file written
    np.testing.assert_allclose(img.affine[:3, 3], -(np.array([32, 16, 8]) - 1) / 2 * np.array([0.5, 1.0, 2.0]))
    from crfgan.synth import nifti_header

    syn = nib.Nifti1Header.from_fileobj(__import__("io").BytesIO(nifti_header((8, 8, 8), (2.0, 1.0, 0.5), (1, 0))))
    np.testing.assert_allclose(syn.get_best_affine(), nib.load(write_nifti(np.zeros((8, 8, 8)), (2.0, 1.0, 0.5),
                                                                           tmp_path / "c.nii")).affine)
    assert img.header["descrip"].tobytes().startswith(b"crfgan test")
    s = load_scan(p)
    assert np.array_equal(s.array.transpose(2, 1, 0), v)
