"""Volume sets for evaluation, all on the model's scale: (N, S, S, S) float32 in [-1, 1], (z, y, x).

A set's URI is either
- a shard dataset from ``crfgan preprocess`` (a folder or ``s3://`` prefix holding ``manifest.json``): volumes are
  read as stored (already in [-1, 1]); the manifest's config gives the modality and CT window; or
- a folder or ``s3://`` prefix of NIfTI volumes (``*.nii``, ``*.nii.gz``, any voxel dtype), e.g. what synthesis
  writes. Each file is read into RAS (z, y, x). An S³ volume is mapped back to [-1, 1] by, in order: its JSON
  sidecar's ``intensity.range`` ([lo, hi] that [-1, 1] was mapped to), the CT window of the data config for CT
  (sidecar ``modality``, else HU-looking intensities), no change when already inside [-1, 1], else the data
  config's MRI percentiles. Any other shape is a raw scan and goes through the full preprocessing
  (``crfgan.volume.prepare``) with the data config.
A file that cannot be used is reported (``errors``: file and reason) and skipped; the set goes on.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import numpy as np
import pyarrow.fs as pafs

from crfgan.storage import exists, filesystem, join, s3_endpoint

NIFTI = (".nii", ".nii.gz")


@dataclass
class VolumeSet:
    name: str
    uri: str
    volumes: np.ndarray  # (N, S, S, S) in [-1, 1]
    modality: str = "ct"  # ct | mri | mixed (a shard set of both: metrics stay on the model scale)
    ct_window: tuple = (-1024.0, 600.0)
    data_hash: str = ""
    train: np.ndarray | None = None  # a shard dataset's train split (the memorisation reference)
    errors: list = field(default_factory=list)
    files: list = field(default_factory=list)


def is_shards(uri: str, endpoint: str = "") -> bool:
    """A ``crfgan preprocess`` output: a ``manifest.json`` that lists shards (a synthesis job's folder has a
    ``manifest.json`` of its own, without them)."""
    fs, root = filesystem(uri, endpoint)
    path = join(root, "manifest.json")
    if not exists(fs, path):
        return False
    with fs.open_input_stream(path) as f:
        return "shards" in json.loads(f.read())


def _hash_arrays(vols: np.ndarray) -> str:
    h = hashlib.sha256(f"{vols.shape}".encode())
    for v in vols:
        h.update(memoryview(np.ascontiguousarray(v, dtype=np.float32)).cast("B"))
    return h.hexdigest()[:16]


def load_shards(uri: str, name: str, endpoint: str = "", max_volumes: int = 0) -> VolumeSet:
    from crfgan.config import config_from_dict
    from crfgan.shards import manifest_hash, read_manifest, read_volumes

    manifest = read_manifest(uri, endpoint)
    cfg = config_from_dict(manifest["config"]) if "config" in manifest else None
    vols, train, modalities = [], [], set()
    for row in read_volumes(uri, split=None, endpoint=endpoint):
        modalities.add(str(row.get("modality") or "ct").lower())
        if not max_volumes or len(vols) < max_volumes:
            vols.append(row["volume"])
        if row.get("split") == "train":
            train.append(row["volume"])
    if not vols:
        raise ValueError(f"{uri}: the shard dataset holds no volumes")
    mhash = manifest_hash(manifest)  # the key crfgan train caches its extractor under
    window = tuple(cfg.data.ct_window) if cfg else (-1024.0, 600.0)
    # a mixed CT+MRI set is not in HU: "mixed" keeps every metric on the model scale (and says so in the report)
    modality = modalities.pop() if len(modalities) == 1 else "mixed"
    return VolumeSet(name, uri, np.stack(vols), modality, window, mhash,
                     np.stack(train) if train else None)


def list_nifti(uri: str, endpoint: str = "") -> list[str]:
    fs, root = filesystem(uri, endpoint)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.File and root.lower().endswith(NIFTI):
        return [root]
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"{uri} does not exist")
    entries = fs.get_file_info(pafs.FileSelector(root, recursive=False))
    return sorted(e.path for e in entries if e.type == pafs.FileType.File and e.path.lower().endswith(NIFTI))


def _sidecar(fs, path: str) -> dict:
    base = path[: -len(".nii.gz")] if path.lower().endswith(".nii.gz") else path[: -len(".nii")]
    side = base + ".json"
    if not exists(fs, side):
        return {}
    with fs.open_input_stream(side, compression=None) as f:
        try:
            return json.loads(f.read().decode())
        except (UnicodeDecodeError, json.JSONDecodeError):
            return {}


def to_unit_scale(vol_zyx: np.ndarray, side: dict, cfg, modality: str) -> np.ndarray:
    """An S³ volume in stored intensities → [-1, 1] (see the module docstring for the order of rules)."""
    rng = (side.get("intensity") or {}).get("range")
    if rng:
        lo, hi = float(rng[0]), float(rng[1])
    elif modality == "ct":
        lo, hi = (float(v) for v in cfg.data.ct_window)
    elif vol_zyx.min() >= -1.001 and vol_zyx.max() <= 1.001:
        return np.clip(vol_zyx, -1, 1).astype(np.float32)
    else:
        lo, hi = (float(v) for v in np.percentile(vol_zyx, list(cfg.data.mri_percentiles)))
    if not hi > lo:
        raise ValueError(f"intensity range [{lo}, {hi}] is empty")
    return np.clip((vol_zyx - lo) / (hi - lo) * 2 - 1, -1, 1).astype(np.float32)


def load_nifti_set(uri: str, name: str, cfg, endpoint: str = "", max_volumes: int = 0, log=print) -> VolumeSet:
    """Every NIfTI file under ``uri`` on the [-1, 1] scale of ``cfg`` (S = ``cfg.model.image_size``)."""
    from crfgan.io import ScanError, load_scan
    from crfgan.volume import prepare

    s = cfg.model.image_size
    fs, _ = filesystem(uri, endpoint)
    paths = list_nifti(uri, endpoint)
    if max_volumes:
        paths = paths[:max_volumes]
    vols, errors, files, modalities = [], [], [], []
    for p in paths:
        shown = f"s3://{p}" if uri.startswith("s3://") else p
        try:
            with fs.open_input_stream(p, compression=None) as f:
                raw = f.read()
            scan = load_scan(raw, name=shown, max_voxels=cfg.data.max_voxels)
            side = _sidecar(fs, p)
            modality = (side.get("modality") or (cfg.data.modality if cfg.data.modality != "auto" else scan.modality))
            modality = "ct" if str(modality).lower() == "ct" else "mri"
            if scan.shape == (s, s, s):
                vol = to_unit_scale(np.ascontiguousarray(scan.array.transpose(2, 1, 0)), side, cfg, modality)
            else:
                vol = prepare(scan, cfg)[0]
            vols.append(vol)
            files.append(shown)
            modalities.append(modality)
        except (ScanError, ValueError, OSError) as e:
            errors.append({"file": shown, "reason": str(e)})
            log(f"[evaluate] skipping {e if isinstance(e, ScanError) else f'{shown}: {e}'}")
    if not vols:
        raise ValueError(f"{uri}: no usable NIfTI volume ({len(paths)} files, {len(errors)} errors)")
    arr = np.stack(vols)
    modality = max(set(modalities), key=modalities.count)
    return VolumeSet(name, uri, arr, modality, tuple(cfg.data.ct_window), _hash_arrays(arr), None, errors, files)


def load_set(uri: str, name: str, cfg, endpoint: str = "", max_volumes: int = 0, log=print) -> VolumeSet:
    endpoint = s3_endpoint(endpoint or cfg.data.s3_endpoint)
    if is_shards(uri, endpoint):
        return load_shards(uri, name, endpoint, max_volumes)
    return load_nifti_set(uri, name, cfg, endpoint, max_volumes, log)
