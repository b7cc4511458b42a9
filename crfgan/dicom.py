"""DICOM series from a local folder → ``Scan`` (RAS, (x, y, z)), via SimpleITK/GDCM.

A series is identified by SeriesInstanceUID (GDCM's series id); several series in one folder are separate volumes
(``list_series`` returns them, ``load_dicom_series(folder, series_uid)`` reads one). Before reading voxels every file's
header is read to (1) check the voxel count against ``max_voxels`` and (2) find missing slices: slice positions are
projected on the slice normal (ImageOrientationPatient row × column) and a gap wider than 1.5× the median step, or
two slices at the same position, is an error naming the gap.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from crfgan.scan import DEFAULT_MAX_VOXELS, Scan, ScanError, scan_from_sitk

GAP_TOLERANCE = 1.5  # a step wider than this × the median step means at least one slice is missing


def list_series(folder) -> dict[str, list[str]]:
    """{series_uid: [files sorted by GDCM]} for the DICOM files directly in ``folder``."""
    import SimpleITK as sitk

    folder = str(folder)
    out = {}
    for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(folder):
        out[uid] = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder, uid))
    return out


# SOP classes of enhanced multi-frame images (one file holds the whole series; orientation lives in functional groups)
ENHANCED_SOP_CLASSES = {"1.2.840.10008.5.1.4.1.1.2.1": "CT", "1.2.840.10008.5.1.4.1.1.4.1": "MR",
                        "1.2.840.10008.5.1.4.1.1.4.3": "MR color", "1.2.840.10008.5.1.4.1.1.130": "PET",
                        "1.2.840.10008.5.1.4.1.1.2.2": "CT (legacy converted)",
                        "1.2.840.10008.5.1.4.1.1.4.4": "MR (legacy converted)"}


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.strip().split("\\") if v.strip()]


def slice_positions(files: list[str], name: str) -> tuple[np.ndarray, dict]:
    """Positions of every slice along the slice normal (mm), and header facts from the first file."""
    import SimpleITK as sitk

    positions, info = [], {}
    normal = None
    for f in files:
        r = sitk.ImageFileReader()
        r.SetFileName(f)
        try:
            r.ReadImageInformation()
        except RuntimeError:
            raise ScanError(name, f"DICOM file {Path(f).name} has an unreadable header", file=f) from None

        def get(k: str, r=r) -> str:
            return r.GetMetaData(k) if r.HasMetaDataKey(k) else ""
        if normal is None:
            frames = get("0028|0008").strip()
            sop = get("0008|0016").strip()
            if (frames.isdigit() and int(frames) > 1) or sop in ENHANCED_SOP_CLASSES:
                what = ENHANCED_SOP_CLASSES.get(sop, "multi-frame")
                raise ScanError(name, f"DICOM file {Path(f).name} is an enhanced {what} image"
                                      + (f" ({frames} frames)" if frames.isdigit() and int(frames) > 1 else "")
                                      + ": enhanced multi-frame DICOM is not supported; convert it to NIfTI (e.g. "
                                        "dcm2niix) or to classic single-frame DICOM", file=f)
            iop = _floats(get("0020|0037"))
            if len(iop) != 6:
                raise ScanError(name, f"DICOM file {Path(f).name} lacks ImageOrientationPatient (0020,0037)", file=f)
            normal = np.cross(iop[:3], iop[3:])
            size = r.GetSize()
            info = {"rows_cols": (int(size[0]), int(size[1])), "modality": get("0008|0060").strip(),
                    "series_uid": get("0020|000e").strip()}
        ipp = _floats(get("0020|0032"))
        if len(ipp) != 3:
            raise ScanError(name, f"DICOM file {Path(f).name} lacks ImagePositionPatient (0020,0032)", file=f)
        positions.append(float(np.dot(normal, ipp)))
    return np.sort(np.array(positions)), info


def check_gaps(positions: np.ndarray, name: str) -> None:
    if positions.size < 3:
        raise ScanError(name, f"DICOM series has {positions.size} slices; at least 3 are needed for a 3D volume")
    steps = np.diff(positions)
    step = float(np.median(steps))
    dup = np.flatnonzero(steps < 1e-3 * max(step, 1e-6))
    if dup.size:
        raise ScanError(name, f"DICOM series has {dup.size} duplicate slice position(s), e.g. at {positions[dup[0]]:.2f} mm")
    gaps = np.flatnonzero(steps > GAP_TOLERANCE * step)
    if gaps.size:
        i = gaps[0]
        missing = round(float(np.sum(steps[gaps] / step - 1)))
        raise ScanError(
            name,
            f"DICOM series is missing {missing} slice(s): gap of {steps[i]:.2f} mm between positions "
            f"{positions[i]:.2f} and {positions[i + 1]:.2f} mm (slice step {step:.2f} mm)",
        )


def load_dicom_series(folder, series_uid: str | None = None, name: str | None = None,
                      max_voxels: int = DEFAULT_MAX_VOXELS) -> Scan:
    import SimpleITK as sitk

    folder = Path(folder)
    name = name or str(folder)
    series = list_series(folder)
    if not series:
        raise ScanError(name, "contains no DICOM series")
    if series_uid is None:
        if len(series) > 1:
            raise ScanError(name, f"holds {len(series)} DICOM series {sorted(series)}; pass series_uid to pick one")
        series_uid = next(iter(series))
    if series_uid not in series:
        raise ScanError(name, f"has no DICOM series {series_uid!r} (found {sorted(series)})")
    files = series[series_uid]
    positions, info = slice_positions(files, name)
    rows, cols = info["rows_cols"]
    n = rows * cols * len(files)
    if n > max_voxels:
        raise ScanError(name, f"DICOM series holds {n:,} voxels, above data.max_voxels={max_voxels:,}")
    check_gaps(positions, name)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        image = reader.Execute()
    except RuntimeError as e:
        raise ScanError(name, f"DICOM voxel data cannot be read ({str(e).strip().splitlines()[-1][:200]})") from None
    meta = {"series_uid": series_uid, "num_files": len(files), "format": "dicom"}
    return scan_from_sitk(image, name, modality_hint=info["modality"], meta=meta)
