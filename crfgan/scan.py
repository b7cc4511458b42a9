"""What every reader returns: a ``Scan`` (RAS, float32, (x, y, z)) or a ``ScanError`` naming the file and the problem.

Shared by ``crfgan.io`` (NIfTI, ITK) and ``crfgan.dicom`` (DICOM series); SimpleITK images of either become a
``Scan`` through ``scan_from_sitk``, which converts SimpleITK's LPS geometry to the RAS affine nibabel uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import nibabel as nib
import numpy as np

DEFAULT_MAX_VOXELS = 1_000_000_000
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


class ScanError(ValueError):
    """A scan that cannot be used; ``path`` names the scan, ``reason`` says what is wrong (and the fix if any).

    ``file`` is the one file at fault when the scan is made of several (a DICOM series), else empty.
    """

    def __init__(self, path: str, reason: str, file: str = ""):
        self.path = str(path)
        self.reason = reason
        self.file = str(file)
        super().__init__(f"{self.path}: {reason}")


@dataclass
class Scan:
    array: np.ndarray  # (x, y, z) float32, RAS voxel order
    spacing: np.ndarray  # (3,) mm along x, y, z
    affine: np.ndarray  # (4, 4) voxel → RAS mm
    name: str  # source path/URI the scan came from
    modality: str = "unknown"  # ct | mri: a guess from metadata or intensities
    meta: dict = field(default_factory=dict)  # original_shape, original_spacing, dtype, series_uid …

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)


def guess_modality(array: np.ndarray, hint: str = "") -> str:
    """CT when metadata says so or the intensities look like Hounsfield units (air near -1000), else MRI."""
    hint = (hint or "").strip().upper()
    if hint == "CT":
        return "ct"
    if hint in ("MR", "MRI"):
        return "mri"
    finite = array[np.isfinite(array)]
    if finite.size and float(finite.min()) <= -500.0:
        return "ct"
    return "mri"


def scan_from_sitk(image, name: str, modality_hint: str = "", meta: dict | None = None) -> Scan:
    """SimpleITK image (LPS, array (z, y, x)) → Scan (RAS, (x, y, z)) through nibabel's canonical reorientation."""
    import SimpleITK as sitk

    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ScanError(name, f"has {image.GetNumberOfComponentsPerPixel()} components per voxel; scalar volumes only")
    if image.GetDimension() != 3:
        raise ScanError(name, f"is {image.GetDimension()}D; a 3D volume is needed")
    arr = sitk.GetArrayViewFromImage(image).transpose(2, 1, 0).astype(np.float32)  # (z,y,x) → (x,y,z)
    spacing = np.array(image.GetSpacing(), dtype=np.float64)
    direction = np.array(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = direction * spacing[None, :]
    lps[:3, 3] = image.GetOrigin()
    img = nib.as_closest_canonical(nib.Nifti1Image(arr, _LPS_TO_RAS @ lps))
    arr = np.asarray(img.dataobj, dtype=np.float32)
    meta = {"original_shape": list(image.GetSize()), "original_spacing": spacing.tolist(), "format": "itk", **(meta or {})}
    zooms = np.array(img.header.get_zooms()[:3], dtype=np.float64)
    return Scan(arr, zooms, np.asarray(img.affine), name, guess_modality(arr, modality_hint), meta)
