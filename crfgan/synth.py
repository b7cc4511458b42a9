"""Synthesis: seeds → latents → halo-tiled render → physical intensities → NIfTI bytes, one volume at a time.

Used by the MLflow pyfunc, ``crfgan synthesize`` (its Ray actors) and the demo. No Ray, no MLflow here.

The generator's **metadata** (``metadata.json`` beside ``generator.safetensors``, plain JSON: nothing is unpickled)
carries what a correct file needs without the training data at hand:

================== ===========================================================================================
key                meaning
================== ===========================================================================================
image_size         S: the cube edge
axis_order         ``zyx``: the model's array order (axial slices first)
orientation        ``RAS``: the voxel axes (x, y, z) of a written file point right, anterior, superior
spacing_zyx_mm     voxel size of the training cubes (median over the training volumes)
modality           ct | mri | mixed (from ``data.modality`` or the modalities in the shards)
intensity          ``unit`` (HU | normalised), ``range`` [lo, hi] that the model's [-1, 1] maps to, ``dtype`` on disk
data_manifest_hash the hash of the preprocessing manifest the model was trained on
class_names        the conditioning classes (``model.class_names``), empty for an unconditional model
================== ===========================================================================================

On disk (NIfTI-1, RAS affine centred on the origin, ``qform``/``sform`` code 1, units mm):
- CT: int16 Hounsfield units, ``scl_slope`` 1: value = lo + (v + 1)/2 · (hi - lo) with [lo, hi] = ``data.ct_window``.
- MRI and mixed models: int16 ``q = round(v · 32767)`` with ``scl_slope``/``scl_inter`` chosen so that readers that
  apply NIfTI scaling (nibabel, ITK, FSL) get float values in ``range``. MRI has no absolute scale and preprocessing
  normalises each scan by its own ``data.mri_percentiles``, so an MRI model's range is [0, 1] (p_low → 0, p_high → 1);
  a model trained on CT and MRI together keeps its normalised [-1, 1].
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass

import numpy as np

METADATA_FILE = "metadata.json"
METADATA_FORMAT = "crfgan-generator-metadata/1"
Q_MAX = 32767  # int16 code of +1 for the scaled (non-HU) encoding
GZIP_IMPLS = ("isal", "zlib", "zlib-ng")


# ------------------------------------------------------------------------------------------------ metadata
def generator_metadata(cfg, spacing_zyx=None, modalities=None, manifest_hash: str = "") -> dict:
    """Metadata of a generator trained with ``cfg`` on volumes of ``spacing_zyx`` mm and ``modalities``."""
    d = cfg.data
    mods = sorted(set(modalities or []))
    if d.modality in ("ct", "mri"):
        modality = d.modality
    elif len(mods) == 1 and mods[0] in ("ct", "mri"):
        modality = mods[0]
    else:
        modality = "mixed" if len(mods) > 1 else "unknown"
    if modality == "ct":
        intensity = {"unit": "HU", "range": [float(v) for v in d.ct_window], "dtype": "int16", "source": "data.ct_window"}
    elif modality == "mri":
        intensity = {"unit": "normalised", "range": [0.0, 1.0], "dtype": "int16+scl_slope",
                     "source": f"data.mri_percentiles {list(d.mri_percentiles)} of each training scan → 0, 1"}
    else:
        intensity = {"unit": "normalised", "range": [-1.0, 1.0], "dtype": "int16+scl_slope",
                     "source": "the model's own range (training data of several modalities)"}
    if spacing_zyx is None:
        sp = float(d.spacing_mm) if d.spacing_mm > 0 else 1.0
        spacing_zyx, spacing_source = [sp] * 3, "assumed (no training data recorded)"
    else:
        spacing_source = "median of the training volumes"
    return {
        "format": METADATA_FORMAT,
        "image_size": int(cfg.model.image_size),
        "axis_order": "zyx",
        "orientation": "RAS",
        "spacing_zyx_mm": [float(v) for v in spacing_zyx],
        "spacing_source": spacing_source,
        "modality": modality,
        "intensity": intensity,
        "data_manifest_hash": manifest_hash,
        "class_names": list(getattr(cfg.model, "class_names", []) or []),
    }


def metadata_from_shards(cfg, data_uri: str, manifest: dict, manifest_hash: str = "", endpoint: str = "") -> dict:
    """``generator_metadata`` for a model trained on the shards at ``data_uri``: median spacing and the modalities
    of every volume (only the small ``spacing``/``modality`` columns are read)."""
    import pyarrow.parquet as pq

    from .shards import filesystem, join

    spacings, mods = [], set()
    for sh in manifest.get("shards", []):
        fs, path = filesystem(join(str(data_uri), sh["path"]), endpoint)
        t = pq.read_table(path, filesystem=fs, columns=["spacing", "modality"])
        spacings += t.column("spacing").to_pylist()
        mods |= set(t.column("modality").to_pylist())
    spacing = np.median(np.asarray(spacings, dtype=np.float64), axis=0).tolist() if spacings else None
    return generator_metadata(cfg, spacing, sorted(mods), manifest_hash)


def check_metadata(meta: dict, where: str) -> dict:
    """Refuse metadata a correct file cannot be written from; ``where`` names the model in the message."""
    missing = [k for k in ("image_size", "spacing_zyx_mm", "intensity", "modality") if k not in meta]
    if missing:
        raise ValueError(f"{where}: generator metadata lacks {missing}")
    sp = meta["spacing_zyx_mm"]
    if len(sp) != 3 or not all(float(v) > 0 for v in sp):
        raise ValueError(f"{where}: generator metadata has a bad spacing {sp}")
    lo, hi = meta["intensity"]["range"]
    if not hi > lo:
        raise ValueError(f"{where}: generator metadata has an empty intensity range {[lo, hi]}")
    return meta


def class_index_for(name: str | None, class_names: list[str], where: str = "the model") -> int | None:
    """Index of class ``name``; None when no class is asked. Clear errors for a bad name or an unconditional model."""
    if name is None:
        return None
    if not class_names:
        raise ValueError(f"{where} is unconditional (no model.class_names); --class cannot be used with it")
    if name not in class_names:
        raise ValueError(f"{where} has no class {name!r}; valid classes: {', '.join(class_names)}")
    return class_names.index(name)


# ------------------------------------------------------------------------------------------------ seeds and latents
def volume_seed(job_seed: int, index: int) -> int:
    """Seed of volume ``index`` of a job: a hash of (job seed, index), so it depends on nothing else."""
    h = hashlib.sha256(f"crfgan-synth:{int(job_seed)}:{int(index)}".encode()).digest()
    return int.from_bytes(h[:8], "little") & (2**63 - 1)


def latents(seeds, latent_dim: int):
    """One latent per integer seed, from torch's CPU generator: the same on every machine and device."""
    import torch

    zs = [torch.randn(1, latent_dim, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
    return torch.cat(zs)  # (B, L)


def render_volumes(g, cfg, seeds, device="cpu", class_index=None) -> np.ndarray:
    """Seeds → volumes (B, S, S, S) float32 in [-1, 1], rendered as ``cfg.synth`` says (halo-tiled by default)."""
    import torch

    with torch.no_grad():
        vol = _render(g, cfg, latents(seeds, cfg.model.latent_dim).to(device), class_index)
    return vol[:, 0].float().cpu().numpy()


def _render(g, cfg, z, class_index=None):
    import torch

    sy = cfg.synth
    kw = {"tiled": sy.tiled, "slab": sy.slab_embedding_slices, "halo": sy.halo, "norm_stats": sy.norm_stats}
    if torch.is_tensor(class_index):  # one class per latent (B,)
        kw["class_index"] = class_index.to(device=z.device, dtype=torch.long)
    elif class_index is not None:  # one class for all; only conditional generators take the keyword
        kw["class_index"] = torch.full((z.shape[0],), int(class_index), dtype=torch.long, device=z.device)
    return g.render(z, **kw)


# ------------------------------------------------------------------------------------------------ physical values
def to_stored(vol, meta: dict):
    """Model output in [-1, 1] (torch or numpy, any device) → the int16 values written, and (slope, inter)."""
    lo, hi = (float(v) for v in meta["intensity"]["range"])
    if meta["intensity"]["unit"] == "HU":
        scale, offset, slope, inter = (hi - lo) / 2.0, (hi + lo) / 2.0, 1.0, 0.0
    else:
        scale, offset, slope, inter = float(Q_MAX), 0.0, (hi - lo) / (2.0 * Q_MAX), (hi + lo) / 2.0
    if isinstance(vol, np.ndarray):
        q = np.rint(np.clip(vol, -1.0, 1.0) * scale + offset).astype(np.int16)
    else:
        import torch

        q = (vol.clamp(-1.0, 1.0) * scale + offset).round_().to(torch.int16)
    return q, (slope, inter)


def physical(stored: np.ndarray, slope_inter) -> np.ndarray:
    """What a NIfTI reader returns for stored values: ``stored · slope + inter``."""
    slope, inter = slope_inter
    return stored.astype(np.float64) * slope + inter


def affine(spacing_zyx, size: int) -> np.ndarray:
    """RAS voxel → mm affine of an (x, y, z) cube with ``size`` voxels per axis, centred on the origin
    (``crfgan.io.affine_from_spacing``, the project's one convention)."""
    from crfgan.io import affine_from_spacing

    return affine_from_spacing(list(spacing_zyx)[::-1], (size, size, size))


def nifti_header(shape_zyx, spacing_zyx, slope_inter, descrip: str = "") -> bytes:
    """NIfTI-1 single-file header (+ empty extension block) for int16 (x, y, z) data: 352 bytes."""
    import nibabel as nib

    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(np.int16)
    hdr.set_data_shape(tuple(int(n) for n in shape_zyx[::-1]))
    a = affine(spacing_zyx, int(shape_zyx[0]))
    hdr.set_qform(a, code=1)
    hdr.set_sform(a, code=1)
    hdr.set_xyzt_units("mm")
    hdr.set_slope_inter(*slope_inter)
    hdr["descrip"] = descrip[:79].encode()
    hdr.set_data_offset(352)
    return hdr.binaryblock + b"\x00" * 4


def _compressobj(impl: str, level: int):
    if impl == "zlib":
        import zlib

        return zlib.compressobj(level, zlib.DEFLATED, 31)  # 31: gzip container, mtime 0 (byte-identical reruns)
    if impl == "isal":
        try:
            from isal import isal_zlib
        except ImportError:
            raise RuntimeError("synth.gzip=isal needs the isal package (pip install isal), or set synth.gzip=zlib") from None
        return isal_zlib.compressobj(level, isal_zlib.DEFLATED, 31)
    if impl == "zlib-ng":
        try:
            from zlib_ng import zlib_ng
        except ImportError:
            raise RuntimeError("synth.gzip=zlib-ng needs the zlib-ng package (pip install zlib-ng)") from None
        return zlib_ng.compressobj(level, zlib_ng.DEFLATED, 31)
    raise ValueError(f"unknown gzip implementation {impl!r}; one of {GZIP_IMPLS}")


def encode_nifti(stored_zyx: np.ndarray, spacing_zyx, slope_inter, fmt: str = "nii.gz", gzip: str = "isal",
                 level: int = 2, descrip: str = "") -> bytes:
    """int16 (z, y, x) volume → the bytes of a ``.nii`` or ``.nii.gz`` file (gzip by ``gzip`` at ``level``).

    The (z, y, x) C-order bytes are exactly NIfTI's (x, y, z) Fortran order: no transpose copy.
    """
    data = memoryview(np.ascontiguousarray(stored_zyx, dtype=np.int16)).cast("B")
    head = nifti_header(stored_zyx.shape, spacing_zyx, slope_inter, descrip)
    if fmt == "nii":
        return head + bytes(data)
    if fmt != "nii.gz":
        raise ValueError(f"format must be nii.gz or nii, got {fmt!r}")
    c = _compressobj(gzip, level)
    return b"".join((c.compress(head), c.compress(data), c.flush()))


# ------------------------------------------------------------------------------------------------ one actor's work
@dataclass
class Rendered:
    data: bytes  # the file's bytes
    render_s: float  # seconds in the generator (to int16 on the device)
    encode_s: float  # seconds building and compressing the file


class Synthesizer:
    """A loaded generator that renders one volume at a time into file bytes. ``g.config``/``g.metadata`` describe it."""

    def __init__(self, g, cfg, meta: dict, device: str = "cpu"):
        self.g, self.cfg, self.meta, self.device = g, cfg, meta, device

    def stored(self, seed: int, class_index: int | None = None):
        """int16 (S, S, S) volume of one seed, and its (slope, inter)."""
        import torch

        with torch.no_grad():
            vol = _render(self.g, self.cfg, latents([seed], self.cfg.model.latent_dim).to(self.device), class_index)
            q, si = to_stored(vol[0, 0], self.meta)
            return q.cpu().numpy(), si

    def render_file(self, seed: int, class_index: int | None = None, fmt: str = "nii.gz", gzip: str = "isal",
                    level: int = 2, descrip: str = "") -> Rendered:
        t0 = time.perf_counter()
        q, si = self.stored(seed, class_index)
        if self.device != "cpu":
            import torch

            torch.cuda.synchronize()
        t1 = time.perf_counter()
        data = encode_nifti(q, self.meta["spacing_zyx_mm"], si, fmt, gzip, level, descrip)
        return Rendered(data, t1 - t0, time.perf_counter() - t1)


def sidecar(meta: dict, model: dict, index: int, job_seed: int, seed: int, class_name: str | None, cfg) -> bytes:
    """The JSON provenance written beside each volume."""
    import crfgan

    s = cfg.synth
    doc = {"model": model.get("name"), "version": model.get("version"), "alias": model.get("alias"),
           "run_id": model.get("run_id"), "source": model.get("uri"), "index": int(index), "job_seed": int(job_seed),
           "seed": int(seed), "class": class_name, "config_hash": cfg.hash(), "package_version": crfgan.__version__,
           "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "image_size": meta["image_size"], "spacing_zyx_mm": meta["spacing_zyx_mm"], "orientation": meta["orientation"],
           "modality": meta["modality"], "intensity": meta["intensity"],
           "data_manifest_hash": meta.get("data_manifest_hash", ""),
           "render": {"tiled": s.tiled, "slab": s.slab_embedding_slices, "halo": s.halo, "norm_stats": s.norm_stats}}
    return json.dumps(doc, indent=2).encode()
