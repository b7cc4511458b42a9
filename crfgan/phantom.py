"""Procedural CT phantoms: a seeded, unlimited source of CT-like volumes in Hounsfield units, and checks on them.

**A controlled test bed, not anatomy.** The volumes are made of ellipses and tubes with CT-like intensities so that a
generative model can be trained on as many distinct volumes as it needs and judged against known generative factors
(how large the lungs are, where the spine runs); nothing here is a model of a real patient.

``phantom_volume(index, size, seed)`` draws volume ``index`` of the set ``seed`` (every ``(seed, index)`` pair is its
own random stream, so volumes are reproducible one by one and distinct across indices) as a ``(size, size, size)``
float32 array in HU, axes ``(z, y, x)`` (z: axial slices; y: posterior → anterior; x across), plus a JSON-able dict
of the factors that made it. Each volume has:

- a body whose elliptical cross-section (centre and both semi-axes) changes smoothly along z, with a layer of fat
  (about -100 HU) around soft tissue (about 40 HU, with a faint low-frequency texture);
- two lungs (parenchyma about -850 HU with a smoothed texture, inside a body surrounded by air at -1000 HU) whose
  size changes along z;
- a heart (about 45 HU) in a thin layer of fat between the lungs over part of the depth;
- a spine (a vertebral body and a posterior arch, bone 600–800 HU, around a canal of about 10 HU) whose centre follows
  a smooth curved path through the whole depth;
- 3–6 contrast-filled vessels (170–260 HU; the largest two run along the spine) that also run through the whole depth
  on curved paths, so every sub-volume border cuts them;
- a point-spread blur (Gaussian, sigma 0.6 voxel) and lightly correlated noise of 10–20 HU.

Sizes, positions, curvatures and HU levels are drawn per volume; the factors record them (``lung_volume_fraction``,
the spine centre path and bone centroid path per slice, vessel count, radii and paths' parameters, HU levels).
Positions and lengths in the factors are in voxels (index coordinates of the returned array).

``measure(volume)`` and ``continuity(volume, borders)`` are what a user can check on *any* CT volume in HU
(synthetic, a phantom, a real scan): the lung volume fraction (voxels below -500 HU inside the body) and the
continuity of the bone (> 400 HU) and vessel (120–400 HU) structures through sub-volume borders — the displacement
of the structure's centroid between consecutive axial slices, across the given border positions versus elsewhere.
A generator that renders sub-volumes independently and shifts them against each other shows a ratio well above 1;
on the phantoms themselves the ratio is about 1. ``to_hu`` maps a prepared shard volume in [-1, 1] back to HU.

Pure NumPy; no Ray, no torch. A 64³ volume takes a few tens of milliseconds.
"""

from __future__ import annotations

import math
from urllib.parse import parse_qsl, urlsplit

import numpy as np

VERSION = 1  # bump when the generator's output changes (preprocessing keys its staging files on it)
SCHEME = "phantom://"
MIN_SIZE, MAX_SIZE = 16, 512

AIR, FAT, SOFT, LUNG, HEART, VESSEL, BONE, CANAL = range(8)
LABELS = {"air": AIR, "fat": FAT, "soft_tissue": SOFT, "lung": LUNG, "heart": HEART, "vessel": VESSEL, "bone": BONE,
          "canal": CANAL}

LUNG_HU = -500.0  # measure(): voxels below this inside the body are lung/air
BONE_HU = 400.0  # above this: bone
VESSEL_HU = (120.0, 400.0)  # contrast-filled vessels (bone edges next to bone excluded)


class PhantomURIError(ValueError):
    """A ``phantom://`` input that cannot be used; the message names the URI and what is wrong."""


# ---------------------------------------------------------------------------------------------------- URIs
def parse_uri(uri: str) -> dict:
    """``phantom://N?size=S&seed=K[&spacing=MM]`` → {"count", "size", "seed", "spacing_mm"}; raises
    ``PhantomURIError`` for N < 1, a size outside [16, 512], a non-positive spacing or an unknown key."""
    if not uri.startswith(SCHEME):
        raise PhantomURIError(f"{uri!r}: not a phantom input (phantom://N?size=S&seed=K)")
    parts = urlsplit(uri)
    try:
        count = int(parts.netloc)
    except ValueError:
        raise PhantomURIError(f"{uri!r}: the volume count N in phantom://N?… must be an integer, got "
                              f"{parts.netloc!r}") from None
    if count < 1:
        raise PhantomURIError(f"{uri!r}: the volume count N must be >= 1, got {count}")
    if parts.path not in ("", "/") or parts.fragment:
        raise PhantomURIError(f"{uri!r}: expected phantom://N?size=S&seed=K (no path or fragment)")
    out = {"count": count, "size": 64, "seed": 0, "spacing_mm": 1.0}
    names = {"size": "size", "seed": "seed", "spacing": "spacing_mm"}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key not in names:
            raise PhantomURIError(f"{uri!r}: unknown key {key!r}; phantom inputs take size, seed and spacing")
        try:
            out[names[key]] = float(value) if key == "spacing" else int(value)
        except ValueError:
            raise PhantomURIError(f"{uri!r}: {key}={value!r} is not a{' number' if key == 'spacing' else 'n integer'}"
                                  ) from None
    if not MIN_SIZE <= out["size"] <= MAX_SIZE:
        raise PhantomURIError(f"{uri!r}: size must be in [{MIN_SIZE}, {MAX_SIZE}] voxels, got {out['size']}")
    if not (math.isfinite(out["spacing_mm"]) and out["spacing_mm"] > 0):
        raise PhantomURIError(f"{uri!r}: spacing must be a positive number of mm, got {out['spacing_mm']}")
    if out["seed"] < 0:
        raise PhantomURIError(f"{uri!r}: seed must be >= 0, got {out['seed']}")
    return out


def volume_uri(index: int, size: int, seed: int, spacing_mm: float = 1.0) -> str:
    """The canonical source URI of one phantom volume (the same volume whatever N the set was asked for)."""
    sp = "" if spacing_mm == 1.0 else f"&spacing={spacing_mm:g}"
    return f"{SCHEME}volume/{int(index)}?size={int(size)}&seed={int(seed)}{sp}"


def parse_volume_uri(uri: str) -> dict:
    """``phantom://volume/I?size=S&seed=K[&spacing=MM]`` → {"index", "size", "seed", "spacing_mm"}."""
    parts = urlsplit(uri)
    if not uri.startswith(SCHEME) or parts.netloc != "volume" or not parts.path.strip("/").isdigit():
        raise PhantomURIError(f"{uri!r}: not a phantom volume URI (phantom://volume/I?size=S&seed=K)")
    q = parse_uri(f"{SCHEME}1?{parts.query}")
    return {"index": int(parts.path.strip("/")), "size": q["size"], "seed": q["seed"], "spacing_mm": q["spacing_mm"]}


# ---------------------------------------------------------------------------------------------------- helpers
def _wave(rng: np.random.Generator, t: np.ndarray, amp: float, fmin: float = 0.3, fmax: float = 1.2) -> tuple:
    """A smooth random curve along z: amp · sin(2π f t + φ), returned with its parameters."""
    f, phi = float(rng.uniform(fmin, fmax)), float(rng.uniform(0, 2 * np.pi))
    return amp * np.sin(2 * np.pi * f * t + phi), {"amplitude": float(amp), "frequency": f, "phase": phi}


def _smooth_noise(rng: np.random.Generator, shape: tuple, sigma: float) -> np.ndarray:
    """White noise low-passed by a Gaussian of ``sigma`` voxels (periodic, through the FFT), scaled to unit std."""
    white = rng.standard_normal(shape, dtype=np.float32)
    freqs = [np.fft.fftfreq(n) for n in shape[:-1]] + [np.fft.rfftfreq(shape[-1])]
    k2 = sum(np.square(f).reshape([-1 if i == j else 1 for j in range(len(shape))]) for i, f in enumerate(freqs))
    axes = tuple(range(len(shape)))
    spectrum = np.fft.rfftn(white, axes=axes) * np.exp(-2 * np.pi**2 * sigma**2 * k2)
    out = np.fft.irfftn(spectrum, s=shape, axes=axes).astype(np.float32)
    return out / max(float(out.std()), 1e-6)


def _blur(vol: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur with edge padding (not periodic: the first and last slices never mix)."""
    r = max(1, int(math.ceil(3 * sigma)))
    w = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    w = (w / w.sum()).astype(np.float32)
    out = vol
    for axis in range(vol.ndim):
        pad = [(0, 0)] * vol.ndim
        pad[axis] = (r, r)
        p = np.pad(out, pad, mode="edge")
        acc = np.zeros_like(out)
        n = out.shape[axis]
        for k, wk in enumerate(w):
            acc += wk * np.take(p, np.arange(k, k + n), axis=axis)
        out = acc
    return out


def _ellipse(yy, xx, cy, cx, ay, ax) -> np.ndarray:
    return np.square((yy - cy) / ay) + np.square((xx - cx) / ax) <= 1.0


def _r(v, nd: int = 4):
    return [round(float(x), nd) for x in v] if np.ndim(v) else round(float(v), nd)


# ---------------------------------------------------------------------------------------------------- generator
def phantom_volume(index: int, size: int = 64, seed: int = 0, return_labels: bool = False):
    """Volume ``index`` of phantom set ``seed``: (float32 (size, size, size) in HU, axes z, y, x; factors dict).

    With ``return_labels`` also the integer label map (``LABELS``) it was painted from, before blur and noise.
    """
    size, index, seed = int(size), int(index), int(seed)
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"phantom size must be in [{MIN_SIZE}, {MAX_SIZE}] voxels, got {size}")
    if index < 0 or seed < 0:
        raise ValueError(f"phantom index and seed must be >= 0, got index={index}, seed={seed}")
    rng = np.random.default_rng(np.random.SeedSequence([VERSION, seed, index]))
    s = size
    t = np.linspace(0.0, 1.0, s)  # depth coordinate per slice
    u = (np.arange(s) + 0.5) / s * 2.0 - 1.0  # in-plane coordinate in [-1, 1]
    yy, xx = u[None, :, None], u[None, None, :]
    col = lambda a: np.asarray(a, dtype=np.float64).reshape(s, 1, 1)  # noqa: E731 — a per-slice value, broadcast

    def vox(v):  # normalised coordinate → voxel index coordinate
        return (np.asarray(v) + 1.0) * s / 2.0 - 0.5

    # body: centre and semi-axes drift smoothly along z
    cy0, cx0 = rng.uniform(-0.05, 0.05, 2)
    wy, _ = _wave(rng, t, 0.02, 0.2, 0.8)
    wx, _ = _wave(rng, t, 0.02, 0.2, 0.8)
    cy, cx = cy0 + wy, cx0 + wx
    ay0, ax0 = float(rng.uniform(0.50, 0.64)), float(rng.uniform(0.68, 0.82))
    may, mdy = _wave(rng, t, float(rng.uniform(0.02, 0.06)), 0.2, 1.0)
    max_, mdx = _wave(rng, t, float(rng.uniform(0.02, 0.06)), 0.2, 1.0)
    ay, ax = ay0 * (1 + may), ax0 * (1 + max_)
    fat = float(rng.uniform(0.05, 0.10))
    ayi, axi = ay - fat, ax - fat  # inner (soft tissue) ellipse
    body = _ellipse(yy, xx, col(cy), col(cx), col(ay), col(ax))
    inner = _ellipse(yy, xx, col(cy), col(cx), col(ayi), col(axi))
    core = _ellipse(yy, xx, col(cy), col(cx), col(0.9 * ayi), col(0.9 * axi))  # organs stay inside tissue

    labels = np.zeros((s, s, s), dtype=np.int8)
    labels[body] = FAT
    labels[inner] = SOFT

    # lungs: two ellipses, size profile along z
    lungs = []
    for side in (-1, 1):
        off_x, off_y = float(rng.uniform(0.38, 0.48)), float(rng.uniform(-0.05, 0.10))
        sx, sy = float(rng.uniform(0.26, 0.36)), float(rng.uniform(0.55, 0.72))
        base = float(rng.uniform(0.65, 0.85))
        prof, pw = _wave(rng, t, float(rng.uniform(0.08, 0.25)), 0.2, 0.6)
        prof = np.clip(base + prof, 0.35, 1.0)
        m = _ellipse(yy, xx, col(cy + off_y * ayi), col(cx + side * off_x * axi), col(prof * sy * ayi),
                     col(prof * sx * axi)) & core
        labels[m] = LUNG
        lungs.append({"side": side, "offset_x": off_x, "offset_y": off_y, "semi_axes_yx": [sy, sx],
                      "profile_base": base, "profile": pw})

    # heart: an ellipsoid between the lungs, anterior, over part of the depth
    th, hh = float(rng.uniform(0.3, 0.7)), float(rng.uniform(0.25, 0.45))
    hs = np.sqrt(np.clip(1.0 - np.square((t - th) / hh), 0.0, None))
    hoy, hox = float(rng.uniform(0.15, 0.30)), float(rng.uniform(-0.15, 0.0))
    hay, hax = float(rng.uniform(0.25, 0.35)), float(rng.uniform(0.18, 0.26))
    pfat = float(rng.uniform(0.02, 0.04))  # pericardial fat around it (else heart and soft tissue look alike)
    hsafe = np.maximum(hs, 1e-6)
    around = _ellipse(yy, xx, col(cy + hoy * ayi), col(cx + hox * axi), col(hsafe * hay * ayi + pfat),
                      col(hsafe * hax * axi + pfat)) & core & (col(hs) > 0)
    heart = _ellipse(yy, xx, col(cy + hoy * ayi), col(cx + hox * axi), col(hsafe * hay * ayi),
                     col(hsafe * hax * axi)) & core & (col(hs) > 0)
    labels[around] = FAT
    labels[heart] = HEART

    # spine: vertebral body + posterior arch around the canal, on a curved path through the whole depth
    rs = float(rng.uniform(0.06, 0.09))
    soff = float(rng.uniform(0.28, 0.40))
    spy_w, spy_p = _wave(rng, t, float(rng.uniform(0.01, 0.04)))
    spx_w, spx_p = _wave(rng, t, float(rng.uniform(0.02, 0.06)))
    spy = cy - soff * ayi + spy_w
    spx = cx + spx_w
    rc, rw = 0.45 * rs, 0.55 * rs
    cny = spy - (rs + 0.8 * rc)  # canal centre, posterior of the vertebral body
    vert = _ellipse(yy, xx, col(spy), col(spx), rs, rs)
    canal = _ellipse(yy, xx, col(cny), col(spx), rc, rc)
    arch = _ellipse(yy, xx, col(cny), col(spx), rc + rw, rc + rw) & ~canal

    # vessels: aorta and vena cava along the spine, smaller ones anywhere inside; all span the whole depth
    n_vessels = int(rng.integers(3, 7))
    vessels, vessel_masks = [], []
    for k in range(n_vessels):
        if k == 0:  # aorta: anterior of the spine, to one side
            r = float(rng.uniform(0.045, 0.065))
            y0 = spy + rs + r + float(rng.uniform(0.10, 0.14))
            x0 = spx + float(rng.uniform(-0.14, -0.06))
            kind, amp = "aorta", float(rng.uniform(0.01, 0.03))
        elif k == 1:  # vena cava: the other side
            r = float(rng.uniform(0.035, 0.05))
            y0 = spy + rs + r + float(rng.uniform(0.10, 0.15))
            x0 = spx + float(rng.uniform(0.08, 0.16))
            kind, amp = "vena_cava", float(rng.uniform(0.01, 0.03))
        else:
            r = float(rng.uniform(0.015, 0.035))
            amp = float(rng.uniform(0.02, 0.08))
            rad = float(rng.uniform(0.0, 0.7)) * (1 - (amp + r) / 0.4)
            ang = float(rng.uniform(0, 2 * np.pi))
            y0 = cy + rad * np.sin(ang) * ayi
            x0 = cx + rad * np.cos(ang) * axi
            kind = "branch"
        r = max(r, 2.0 / s)  # at least one voxel in radius, so the vessel survives the blur at small sizes
        vy, pvy = _wave(rng, t, amp)
        vx, pvx = _wave(rng, t, amp)
        py, px = y0 + vy, x0 + vx
        m = _ellipse(yy, xx, col(py), col(px), r, r) & inner
        vessel_masks.append(m)
        hu = float(rng.uniform(170, 260))
        vessels.append({"kind": kind, "radius_vox": r * s / 2, "hu": hu, "wave_y": pvy, "wave_x": pvx,
                        "centre_first_yx": [float(vox(py[0])), float(vox(px[0]))],
                        "centre_last_yx": [float(vox(py[-1])), float(vox(px[-1]))]})
    for m in vessel_masks:
        labels[m] = VESSEL
    labels[(vert | arch) & body] = BONE
    labels[canal & body] = CANAL

    # intensities
    hu = {"air": -1000.0, "fat": float(rng.uniform(-120, -80)), "soft_tissue": float(rng.uniform(30, 55)),
          "lung": float(rng.uniform(-880, -820)), "heart": float(rng.uniform(35, 55)),
          "bone": float(rng.uniform(600, 800)), "canal": float(rng.uniform(5, 20))}
    lut = np.array([hu["air"], hu["fat"], hu["soft_tissue"], hu["lung"], hu["heart"], 0.0, hu["bone"], hu["canal"]],
                   dtype=np.float32)
    vol = lut[labels]
    for v, m in zip(vessels, vessel_masks):
        vol[m & (labels == VESSEL)] = v["hu"]
    lung_tex = float(rng.uniform(25, 45))
    scale = s / 64
    lung = labels == LUNG
    vol[lung] += np.clip(_smooth_noise(rng, (s, s, s), max(0.8, 1.2 * scale))[lung], -3, 3) * lung_tex
    soft = labels == SOFT
    vol[soft] += _smooth_noise(rng, (s, s, s), max(1.5, 3.0 * scale))[soft] * 6.0
    vol = _blur(vol, 0.6)
    noise_hu = float(rng.uniform(10, 20))
    vol += _smooth_noise(rng, (s, s, s), 0.5) * noise_hu
    vol = np.clip(vol, -1024.0, 3071.0).astype(np.float32)

    # factors: what made this volume, measured on the label map where a fraction or a centroid is asked for
    n_body = int((labels != AIR).sum())
    zs, ys, xs = np.nonzero(labels == BONE)
    cnt = np.bincount(zs, minlength=s)
    bone_c = np.stack([np.bincount(zs, ys, s), np.bincount(zs, xs, s)], 1) / np.maximum(cnt, 1)[:, None]
    factors = {
        "generator": "crfgan.phantom", "version": VERSION, "seed": seed, "index": index, "size": s,
        "axes": "zyx", "units": "positions and lengths in voxels of the returned array",
        "body_volume_fraction": n_body / s**3,
        "lung_volume_fraction": float(lung.sum()) / max(n_body, 1),
        "heart_volume_fraction": float((labels == HEART).sum()) / max(n_body, 1),
        "bone_volume_fraction": float((labels == BONE).sum()) / max(n_body, 1),
        "body": {"centre_yx": [float(vox(cy0)), float(vox(cx0))], "semi_axes_yx": [ay0 * s / 2, ax0 * s / 2],
                 "modulation_y": mdy, "modulation_x": mdx, "fat_thickness_vox": fat * s / 2},
        "lungs": lungs,
        "heart": {"z_centre": th * (s - 1), "half_height_vox": hh * (s - 1)},
        "spine": {"radius_vox": rs * s / 2, "wave_y": spy_p, "wave_x": spx_p,
                  "centre_path_yx": [[_r(vox(a), 3), _r(vox(b), 3)] for a, b in zip(spy, spx)],
                  "bone_centroid_path_yx": [_r(c, 3) for c in bone_c]},
        "vessel_count": n_vessels, "vessel_radii_vox": [v["radius_vox"] for v in vessels], "vessels": vessels,
        "hu": {**hu, "vessels": [v["hu"] for v in vessels]}, "lung_texture_hu": lung_tex, "noise_hu": noise_hu,
        "blur_sigma_vox": 0.6,
    }
    factors = _jsonable(factors)
    return (vol, factors, labels) if return_labels else (vol, factors)


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return round(float(obj), 5)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def phantom_scan(uri: str):
    """A ``crfgan.scan.Scan`` for a phantom volume URI (``volume_uri``): RAS, (x, y, z), the given spacing, CT; the
    factors in ``meta["phantom_factors"]``. Used by the preprocessing pipeline."""
    from .scan import Scan

    q = parse_volume_uri(uri)
    vol, factors = phantom_volume(q["index"], q["size"], q["seed"])
    sp = q["spacing_mm"]
    factors["spacing_mm"] = sp
    arr = np.ascontiguousarray(vol.transpose(2, 1, 0))  # (z, y, x) → (x, y, z)
    affine = np.diag([sp, sp, sp, 1.0])
    meta = {"original_shape": list(arr.shape), "original_spacing": [sp] * 3, "format": "phantom",
            "phantom_factors": factors}
    return Scan(arr, np.array([sp] * 3), affine, uri, "ct", meta)


# ---------------------------------------------------------------------------------------------------- checks
def to_hu(volume: np.ndarray, ct_window=(-1024.0, 600.0)) -> np.ndarray:
    """A prepared volume in [-1, 1] (``data.ct_window`` mapped to [-1, 1]) back to HU (values outside the window were
    clipped by preprocessing and stay at its ends)."""
    lo, hi = (float(v) for v in ct_window)
    return ((np.asarray(volume, dtype=np.float32) + 1.0) / 2.0 * (hi - lo) + lo).astype(np.float32)


def body_mask(volume: np.ndarray, level: float = LUNG_HU) -> np.ndarray:
    """Voxels inside the body: per axial slice, between the first and last voxel above ``level`` along every row
    *and* every column (fills the lungs of a body surrounded by air; pure NumPy, no hole filling library)."""
    t = np.asarray(volume) > level
    row = np.maximum.accumulate(t, axis=2) & np.maximum.accumulate(t[..., ::-1], axis=2)[..., ::-1]
    colm = np.maximum.accumulate(t, axis=1) & np.maximum.accumulate(t[:, ::-1], axis=1)[:, ::-1]
    return row & colm


def _neighbours(m: np.ndarray, r: int = 1) -> np.ndarray:
    """Per voxel, how many voxels of ``m`` lie in its (2r+1)² in-plane neighbourhood (itself included)."""
    out = np.zeros(m.shape, dtype=np.int16)
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            ys = slice(max(dy, 0), m.shape[1] + min(dy, 0))
            yd = slice(max(-dy, 0), m.shape[1] + min(-dy, 0))
            xs = slice(max(dx, 0), m.shape[2] + min(dx, 0))
            xd = slice(max(-dx, 0), m.shape[2] + min(-dx, 0))
            out[:, yd, xd] += m[:, ys, xs]
    return out


def structure_mask(volume: np.ndarray, structure: str) -> np.ndarray:
    """bone: > 400 HU; vessels: 120–400 HU, not within 2 voxels of bone (bone edges blur through that band), and
    with at least 4 band voxels in the 3×3 in-plane neighbourhood (isolated noise voxels are not a vessel)."""
    v = np.asarray(volume)
    bone = v > BONE_HU
    if structure == "bone":
        return bone
    if structure == "vessels":
        band = (v > VESSEL_HU[0]) & (v < VESSEL_HU[1]) & (_neighbours(bone, 2) == 0)
        return band & (_neighbours(band, 1) >= 4)
    raise ValueError(f"structure must be 'bone' or 'vessels', got {structure!r}")


def centroid_path(weights: np.ndarray) -> np.ndarray:
    """(z, 2) in-plane centroid (y, x) of ``weights`` (a mask or non-negative weights) in every axial slice; NaN
    where a slice has none."""
    w = np.asarray(weights, dtype=np.float64)
    tot = w.sum(axis=(1, 2))
    yi = np.arange(w.shape[1], dtype=np.float64)
    xi = np.arange(w.shape[2], dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        c = np.stack([(w.sum(axis=2) * yi).sum(axis=1), (w.sum(axis=1) * xi).sum(axis=1)], 1) / tot[:, None]
    c[tot == 0] = np.nan
    return c


def continuity(volume: np.ndarray, borders, structure: str = "bone") -> dict:
    """Centroid displacement of a structure between consecutive axial slices, across borders vs elsewhere.

    ``borders``: z positions where a sub-volume starts (the step from slice b-1 to slice b crosses border b).
    Returns, in voxels per slice, ``border_mean`` (steps across a border), ``interior_mean`` (all other steps) and
    ``ratio`` = border_mean / interior_mean, plus ``local_ratio``: the border steps against the steps just before
    and after each border (b-2 → b-1 and b → b+1), which cancels most of a curved path's slowly changing slope and
    so varies far less from volume to volume than ``ratio`` with its few border samples. Both are about 1 when the
    borders are no different from anywhere else; a seam that shifts a sub-volume in-plane makes them larger. Also
    the counts and how many slices had no voxel of the structure (their steps are skipped).
    """
    v = np.asarray(volume)
    s = v.shape[0]
    borders = sorted({int(b) for b in borders})
    if any(not 0 < b < s for b in borders):
        raise ValueError(f"borders must lie in (0, {s}); got {borders}")
    mask = structure_mask(v, structure)
    # weights: how far above the band's lower edge (edge voxels that flicker with noise count little)
    lo = BONE_HU if structure == "bone" else VESSEL_HU[0]
    w = np.where(mask, np.clip(v - lo, 0.0, 300.0), 0.0)
    c = centroid_path(w)
    d = np.linalg.norm(np.diff(c, axis=0), axis=1)  # d[i]: slice i → i+1
    ok = np.isfinite(d)
    at_border = np.zeros(s - 1, dtype=bool)
    at_border[[b - 1 for b in borders]] = True
    near = np.zeros(s - 1, dtype=bool)
    for b in borders:
        for i in (b - 2, b):
            if 0 <= i < s - 1 and not at_border[i]:
                near[i] = True
    db, di, dn = d[at_border & ok], d[~at_border & ok], d[near & ok]

    def mean(x):
        return float(x.mean()) if x.size else float("nan")

    bm, im, nm = mean(db), mean(di), mean(dn)
    return {"structure": structure, "border_mean": bm, "interior_mean": im,
            "ratio": bm / im if im > 0 else float("nan"), "neighbour_mean": nm,
            "local_ratio": bm / nm if nm > 0 else float("nan"), "n_border": int(db.size), "n_interior": int(di.size),
            "missing_slices": int(np.isnan(c[:, 0]).sum()), "borders": borders}


def measure(volume: np.ndarray, borders=None, slab_depth: int | None = None) -> dict:
    """What can be checked on any CT volume in HU, axes (z, y, x): lung volume fraction (voxels below -500 HU inside
    the body, see ``body_mask``), body volume fraction, and bone/vessel continuity at sub-volume borders (default:
    every ``slab_depth`` = S/8 slices, the sub-volume depth of the model)."""
    v = np.asarray(volume, dtype=np.float32)
    if v.ndim != 3:
        raise ValueError(f"measure() needs a 3D volume (z, y, x), got shape {v.shape}")
    s = v.shape[0]
    if borders is None:
        sd = slab_depth or max(1, s // 8)
        borders = list(range(sd, s, sd))
    body = body_mask(v)
    n_body = int(body.sum())
    lung = body & (v < LUNG_HU)
    return {
        "lung_volume_fraction": float(lung.sum()) / max(n_body, 1),
        "body_volume_fraction": n_body / v.size,
        "continuity": {k: continuity(v, borders, k) for k in ("bone", "vessels")},
    }


def shift_after(volume: np.ndarray, border: int, shift: int, axis: int = 2, fill: float = -1000.0) -> np.ndarray:
    """A copy whose slices from ``border`` on are moved by ``shift`` voxels in-plane (``axis`` 1 = y, 2 = x), the
    vacated edge filled with ``fill``: a simulated seam, to check that ``continuity`` sees one."""
    out = np.array(volume, dtype=np.float32, copy=True)
    part = np.roll(out[border:], shift, axis=axis)
    idx = [slice(None)] * 3
    idx[axis] = slice(0, shift) if shift > 0 else slice(shift, None)
    part[tuple(idx)] = fill
    out[border:] = part
    return out
