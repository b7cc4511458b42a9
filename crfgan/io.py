"""Read CT/MRI scans into one shape (RAS, float32, (x, y, z)) and write NIfTI volumes with real geometry.

Pure NumPy/nibabel/SimpleITK; no Ray. Every problem a user can meet with a file is a ``ScanError`` whose message names
the file and what is wrong with it, so the preprocessing pipeline can turn it into an error row and go on.

Choices worth knowing:
- 4D NIfTI (fMRI, perfusion series) is **refused** unless every extra axis has length 1 (then squeezed): taking the
  first frame silently would put one arbitrary time point of a series into an anatomical training set.
- Non-scalar voxel types (RGB24 structured dtypes, complex) are refused; 2D images are refused.
- The voxel count in the header is checked against ``max_voxels`` before any voxel is read or allocated.
- DICOM series (a folder) are read by ``crfgan.dicom``; ``.mha``/``.nrrd`` (anything SimpleITK reads) by SimpleITK.
  SimpleITK's LPS geometry is converted to the RAS affine nibabel uses, so every format ends in the same frame.
"""

from __future__ import annotations

import gzip
import io
import tempfile
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from .dicom import load_dicom_series
from .scan import DEFAULT_MAX_VOXELS, Scan, ScanError, guess_modality, scan_from_sitk  # noqa: F401 (re-exported)
from .storage import atomic_local_path

NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = (".mha", ".mhd", ".nrrd", ".nhdr")


def _check_shape(name: str, shape: tuple, max_voxels: int) -> tuple[int, ...]:
    shape = tuple(int(s) for s in shape)
    if len(shape) < 3 or (len(shape) >= 3 and min(shape[:3]) == 1 and sum(s > 1 for s in shape) < 3):
        raise ScanError(name, f"is a 2D image (shape {shape}); a 3D volume is needed")
    if len(shape) > 3:
        if any(s != 1 for s in shape[3:]):
            raise ScanError(
                name,
                f"is a {len(shape)}D series (shape {shape}); 4D inputs are refused, split it into 3D volumes first",
            )
        shape = shape[:3]
    if min(shape) < 1:
        raise ScanError(name, f"has an empty dimension (shape {shape})")
    n = int(np.prod(np.array(shape, dtype=np.float64)))
    if n > max_voxels:
        raise ScanError(name, f"header claims {n:,} voxels (shape {shape}), above data.max_voxels={max_voxels:,}")
    return shape


def _check_dtype(name: str, dtype: np.dtype) -> None:
    dtype = np.dtype(dtype)
    if dtype.fields is not None or dtype.kind not in "biuf":
        raise ScanError(name, f"voxel type {dtype} is not a scalar intensity (RGB/complex volumes are refused)")


def _nifti_class(head: bytes, name: str):
    if len(head) < 4:
        raise ScanError(name, "is too short to be a NIfTI file")
    for order in ("<", ">"):
        size = int(np.frombuffer(head[:4], dtype=f"{order}i4")[0])
        if size == 348:
            return nib.Nifti1Image
        if size == 540:
            return nib.Nifti2Image
    raise ScanError(name, "is not a NIfTI file (bad header size field); is it corrupt or misnamed?")


def _check_raw_pixdim(head: bytes, name: str) -> None:
    """Refuse a header whose stored voxel spacing is zero, negative or not finite.

    nibabel silently reads a zero ``pixdim`` as 1 mm ("setting 0 dims to 1"), so the header's own bytes are checked
    before it gets the chance: pixdim[1:4] is float32 at byte 76 (NIfTI-1) or float64 at byte 104 (NIfTI-2).
    """
    for order in ("<", ">"):
        size = int(np.frombuffer(head[:4], dtype=f"{order}i4")[0])
        if size == 348 and len(head) >= 92:
            pix = np.frombuffer(head[76:92], dtype=f"{order}f4")[1:4]
            break
        if size == 540 and len(head) >= 136:
            pix = np.frombuffer(head[104:136], dtype=f"{order}f8")[1:4]
            break
    else:
        return
    if not (np.all(np.isfinite(pix)) and np.all(pix > 0)):
        raise ScanError(name, f"header voxel spacing (pixdim) {[float(v) for v in pix]} is zero, negative or not "
                              f"finite; the scan's geometry is unknown (nibabel would read it as 1 mm)")


def _open_nifti_bytes(raw: bytes, name: str):
    """A lazy image over in-memory bytes (gzipped or not): the header is parsed, no voxel is read yet."""
    if raw[:2] == b"\x1f\x8b":
        try:  # decompress only the first bytes to identify the header
            head = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(raw[:4096], 1024)
        except zlib.error as e:
            raise ScanError(name, f"is not a valid gzip stream ({e})") from None
        fileobj = gzip.GzipFile(fileobj=io.BytesIO(raw), mode="rb")
    else:
        head = raw[:4]
        fileobj = io.BytesIO(raw)
    klass = _nifti_class(head, name)
    _check_raw_pixdim(head, name)
    fh = nib.FileHolder(fileobj=fileobj)
    return klass.from_file_map({"header": fh, "image": fh})


def check_header_bytes(head: bytes, name: str, max_voxels: int = DEFAULT_MAX_VOXELS) -> None:
    """Check a NIfTI file's first bytes (gzipped or not; the first 64 KiB are plenty) before fetching the rest:
    raises ``ScanError`` for a non-NIfTI header, a bad spacing, a non-scalar voxel type or too many voxels."""
    img = _open_nifti_bytes(head, name)
    _check_dtype(name, img.get_data_dtype())
    _check_shape(name, img.shape, max_voxels)


def to_float32(raw: np.ndarray, name: str) -> np.ndarray:
    """Voxels as float32; finite values beyond float32's range are refused here (cast, they would become Inf and be
    reported as NaN/Inf voxels)."""
    if raw.dtype.kind == "f" and raw.dtype.itemsize > 4:
        big = np.abs(raw) > np.finfo(np.float32).max  # NaN compares False, Inf is counted with the NaN/Inf check
        big &= np.isfinite(raw)
        n = int(big.sum())
        if n:
            raise ScanError(name, f"{n:,} of {raw.size:,} voxels have finite values beyond float32's range (|v| up to "
                                  f"{float(np.abs(raw[big]).max()):.3g}): not plausible intensities; refused")
    return raw.astype(np.float32, copy=False)


def _read_nifti(img, name: str, max_voxels: int) -> Scan:
    _check_dtype(name, img.get_data_dtype())
    shape = _check_shape(name, img.shape, max_voxels)
    original_spacing = [float(z) for z in img.header.get_zooms()[:3]]
    original_shape = list(shape)
    if len(img.shape) > 3:  # only singleton extra axes reach here
        img = nib.Nifti1Image(np.asarray(img.dataobj).reshape(shape), img.affine, img.header)
    img = nib.as_closest_canonical(img)
    try:
        raw = np.asarray(img.dataobj).reshape(img.shape[:3])  # native type (float64 after scaling), then checked
    except (EOFError, zlib.error, OSError, ValueError) as e:
        raise ScanError(name, f"voxel data cannot be read, the file is truncated or corrupt ({type(e).__name__}: {e})") from None
    arr = to_float32(raw, name)
    spacing = np.array([float(z) for z in img.header.get_zooms()[:3]])
    if not np.all(spacing > 0):
        raise ScanError(name, f"has non-positive voxel spacing {spacing.tolist()}")
    meta = {
        "original_shape": original_shape,
        "original_spacing": original_spacing,
        "dtype": str(img.get_data_dtype()),
        "format": "nifti",
    }
    return Scan(arr, spacing, np.asarray(img.affine, dtype=np.float64), name, guess_modality(arr), meta)


def _read_itk(path: str, name: str, max_voxels: int) -> Scan:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        raise ScanError(name, f"SimpleITK cannot read the header ({str(e).strip().splitlines()[-1][:200]})") from None
    if reader.GetNumberOfComponents() != 1:
        raise ScanError(name, f"has {reader.GetNumberOfComponents()} components per voxel; scalar volumes only")
    _check_shape(name, reader.GetSize(), max_voxels)
    try:
        image = reader.Execute()
    except RuntimeError as e:
        raise ScanError(name, f"voxel data cannot be read ({str(e).strip().splitlines()[-1][:200]})") from None
    return scan_from_sitk(image, name)


def load_scan(path_or_bytes, name: str | None = None, max_voxels: int = DEFAULT_MAX_VOXELS) -> Scan:
    """Read one scan: a NIfTI/ITK file path, a DICOM series folder, or the bytes of a NIfTI/ITK file.

    ``name`` is what error messages and ``Scan.name`` show (a URI for bytes read from S3); for bytes it also decides
    the format by its suffix (NIfTI unless it ends in an ITK suffix). Raises ``ScanError`` for anything unusable.
    """
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        raw = bytes(path_or_bytes)
        name = name or "<bytes>"
        if not raw:
            raise ScanError(name, "is empty (0 bytes)")
        if name.lower().endswith(ITK_SUFFIXES):
            with tempfile.TemporaryDirectory(prefix="crfgan-itk-") as d:
                tmp = Path(d) / Path(name).name
                tmp.write_bytes(raw)
                return _read_itk(str(tmp), name, max_voxels)
        return _read_nifti(_open_nifti_bytes(raw, name), name, max_voxels)
    path = Path(path_or_bytes)
    name = name or str(path)
    if path.is_dir():
        return load_dicom_series(path, name=name, max_voxels=max_voxels)
    if not path.is_file():
        raise ScanError(name, "does not exist")
    if path.stat().st_size == 0:
        raise ScanError(name, "is empty (0 bytes)")
    if path.name.lower().endswith(ITK_SUFFIXES):
        return _read_itk(str(path), name, max_voxels)
    with open(path, "rb") as f:
        head = f.read(4096)
    if head[:2] == b"\x1f\x8b":
        try:
            head = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(head, 1024)
        except zlib.error as e:
            raise ScanError(name, f"is not a valid gzip stream ({e})") from None
    _nifti_class(head, name)
    _check_raw_pixdim(head, name)
    try:
        img = nib.load(str(path))
    except Exception as e:
        raise ScanError(name, f"nibabel cannot parse the header ({type(e).__name__}: {e})") from None
    return _read_nifti(img, name, max_voxels)


def affine_from_spacing(spacing_xyz, shape_xyz) -> np.ndarray:
    """RAS voxel → mm affine of an (x, y, z) volume: axes along +x, +y, +z with the given spacing, the volume's
    centre at the origin. The one affine of every file this project writes (``write_nifti``, ``crfgan synthesize``):
    a generated or cropped volume has no scanner position, so all of them share this convention."""
    sp = np.asarray([float(s) for s in spacing_xyz], dtype=np.float64)
    a = np.diag([*sp, 1.0])
    a[:3, 3] = -(np.asarray(shape_xyz, dtype=np.float64) - 1) / 2.0 * sp
    return a


def write_nifti(volume_zyx: np.ndarray, spacing, path, extra_header: dict | None = None, order: str = "zyx") -> Path:
    """Write a (z, y, x) volume (the model's axis order) as NIfTI (x, y, z) RAS with a real affine.

    ``spacing`` is given in the same order as ``order`` says (zyx by default; pass ``order="xyz"`` for x, y, z).
    ``extra_header`` may set ``descrip`` (≤ 80 chars) and ``intent_name`` (≤ 16). The file is written to a
    temporary name in the same folder and renamed into place: a reader sees the whole file or none.
    """
    vol = np.asarray(volume_zyx, dtype=np.float32)
    assert vol.ndim == 3, f"write_nifti needs a 3D volume, got shape {vol.shape}"
    sp = [float(s) for s in spacing]
    assert len(sp) == 3 and all(s > 0 for s in sp), f"spacing must be 3 positive numbers, got {spacing}"
    sp_xyz = sp[::-1] if order == "zyx" else sp
    img = nib.Nifti1Image(vol.transpose(2, 1, 0), affine_from_spacing(sp_xyz, vol.shape[::-1]))
    img.header.set_xyzt_units("mm")
    img.header.set_qform(img.affine, code=1)
    img.header.set_sform(img.affine, code=1)
    for key, value in (extra_header or {}).items():
        img.header[key] = str(value)[: 80 if key == "descrip" else 16]
    path = Path(path)
    with atomic_local_path(path, suffix=".nii.gz" if path.name.endswith(".gz") else ".nii") as tmp:
        nib.save(img, tmp)
    return path
