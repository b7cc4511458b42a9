"""``crfgan bench metrics``: does each quality metric see each failure? The degradation suite.

For each size and seed: random crops of the shipped real CT (``crfgan/data/example_ct.nii.gz`` at 3 mm) form a
reference set R (the "training" set) and a disjoint draw H of the same size (the held-out floor: what a perfect
generator would score); every degradation in ``crfgan.metrics.degrade.SUITE`` is applied to H, and every metric
is computed for H and for each degraded copy against R. Per metric and row: the mean over seeds, the floor's mean
± standard deviation over seeds, z = (row − floor) / floor sd signed so that positive is worse, and ✓ when the row is
worse than the floor in every seed and z ≥ 3. Seams are placed at the sub-volume borders of the size's preset
model (``--config`` overrides), where a CRF-GAN would leave them. Crops overlap (one scan), so the floors are
optimistic about data variety; the effects are what the table is for.
"""

from __future__ import annotations

import time

import numpy as np

METRICS = {  # name → +1 if higher is worse, −1 if lower is worse
    "quality_score": 1, "swd_fine": 1, "intensity_shift_abs": 1, "hist_w1_hu": 1, "dup_ratio": -1, "seam_score": 1,
    "memorisation_ratio": -1, "swd_all": 1, "spectrum_dist": 1, "fd_ssl": 1,
}
HEADLINE_EXEMPT = ("memorised copies", "memorised, flipped")  # perfect fidelity by construction: memorisation_ratio's job


def add_arguments(p) -> None:
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 64], help="cube sides (default: 32 64)")
    p.add_argument("--volumes", type=int, default=32, help="volumes per set (default 32)")
    p.add_argument("--seeds", type=int, default=3, help="seeds (independent draws of both sets; default 3)")
    p.add_argument("--scan", default="", help="a CT NIfTI to crop (default: the shipped example_ct.nii.gz)")
    p.add_argument("--spacing", type=float, default=3.0, help="resample the scan to this spacing in mm (default 3)")
    p.add_argument("--config", default="", help="model preset whose sub-volume borders place the seams "
                                                "(default: tiny at 32³, ct64 at 64³, ctS otherwise)")
    p.add_argument("--cost", action="store_true",
                   help="instead of the suite: what scoring costs training (seconds of one quality_score against "
                        "train.val_every training iterations of the size's preset, or --config)")
    p.add_argument("--with-fd", action="store_true",
                   help="also fd_ssl: the SSL extractor trained on each seed's reference set as `crfgan evaluate` does "
                        "(eval.ssl_* defaults; minutes per seed on a CPU)")
    p.add_argument("--json", metavar="PATH", help="also write the figures as JSON")


def ct_source(path: str, spacing_mm: float) -> np.ndarray:
    """The scan on the model scale [−1, 1] (CT window −1024…600 HU), (z, y, x), resampled to ``spacing_mm``."""
    from crfgan.config import load_config
    from crfgan.io import load_scan
    from crfgan.volume import fix_nonfinite, normalise, resample

    scan = load_scan(path)
    arr = fix_nonfinite(np.asarray(scan.array, np.float32), scan.name)
    arr, _ = resample(arr, scan.spacing, spacing_mm)
    return np.ascontiguousarray(normalise(arr, "ct", load_config("tiny"), scan.name).transpose(2, 1, 0))


def crops(src: np.ndarray, size: int, n: int, rng: np.random.Generator) -> np.ndarray:
    if min(src.shape) < size:
        raise ValueError(f"the scan is {src.shape} voxels at this spacing, smaller than {size}³ crops: lower "
                         "--spacing or --sizes")
    out = []
    for _ in range(n):
        o = [int(rng.integers(0, src.shape[i] - size + 1)) for i in range(3)]
        out.append(src[o[0] : o[0] + size, o[1] : o[1] + size, o[2] : o[2] + size])
    return np.stack(out).astype(np.float32)


def _metrics(ref: dict, real_spectrum, vols, geometry, fd=None) -> dict:
    from crfgan.metrics import headline
    from crfgan.metrics.physics import mean_spectrum, spectrum_distance_from

    m = headline.assess(ref, vols, geometry)
    m["intensity_shift_abs"] = abs(m["intensity_shift_hu"])
    m["spectrum_dist"] = spectrum_distance_from(real_spectrum, mean_spectrum(vols))
    out = {k: m[k] for k in METRICS if k in m}
    if fd is not None:
        out["fd_ssl"] = fd(vols)
    return out


def _fd_ssl(real):
    """fd_ssl against ``real`` with an extractor trained on it, as ``crfgan evaluate`` does (eval.ssl_* defaults)."""
    from crfgan.config import load_config
    from crfgan.metrics.distances import frechet_distance
    from crfgan.metrics.features import extract, train_extractor
    from crfgan.metrics.quick import ssl_params

    ext = train_extractor(real, "bench-metrics", ssl_params(load_config("tiny")))
    fr = extract(ext, real)
    return lambda v: frechet_distance(fr, extract(ext, v))


def suite(size: int, volumes: int, seeds: int, src: np.ndarray, geometry, log=print, with_fd: bool = False) -> dict:
    """{row: {metric: [value per seed]}} with the row "floor" first."""
    from crfgan.metrics import degrade, headline
    from crfgan.metrics.physics import mean_spectrum

    values: dict = {}
    for seed in range(seeds):
        t0 = time.perf_counter()
        rng = np.random.default_rng(seed)
        R, H = crops(src, size, volumes, rng), crops(src, size, volumes, rng)
        ref, spec = headline.reference(R), mean_spectrum(R)
        fd = _fd_ssl(R) if with_fd else None
        ctx = {"hu": headline.HU_PER_UNIT, "slab": geometry[0], "reference": R}
        rows = {"floor": H, **{name: f(H, np.random.default_rng(1000 + seed), ctx)
                               for name, (f, _) in degrade.SUITE.items()}}
        for name, v in rows.items():
            for k, x in _metrics(ref, spec, v, geometry, fd).items():
                values.setdefault(name, {}).setdefault(k, []).append(float(x))
        log(f"[bench metrics] {size}³ seed {seed}: {len(rows)} sets in {time.perf_counter() - t0:.1f} s")
    return values


def summarise(values: dict) -> dict:
    """{row: {metric: {"mean", "z", "detected"}}} and {metric: {"floor_mean", "floor_sd"}}."""
    floor = values["floor"]
    fstats = {k: {"floor_mean": float(np.mean(v)), "floor_sd": float(np.std(v, ddof=1)) if len(v) > 1 else
                  float("nan")} for k, v in floor.items()}
    out = {}
    for row, ms in values.items():
        if row == "floor":
            continue
        out[row] = {}
        for k, v in ms.items():
            sign, f = METRICS[k], np.asarray(floor[k])
            v = np.asarray(v)
            if not np.isfinite(v).all() or not np.isfinite(f).all():
                out[row][k] = {"mean": float("nan"), "z": float("nan"), "detected": None}
                continue
            sd = fstats[k]["floor_sd"]
            z = sign * (v.mean() - f.mean()) / sd if sd > 0 else (np.inf if sign * (v.mean() - f.mean()) > 0
                                                                   else 0.0)
            out[row][k] = {"mean": float(v.mean()), "z": float(z),
                           "detected": bool(z >= 3 and (sign * (v - f) > 0).all())}
    return {"rows": out, "floor": fstats}


def _geometry(size: int, config: str):
    from crfgan.config import load_config
    from crfgan.metrics.seam import model_seam_geometry

    name = config or {32: "tiny", 64: "ct64"}.get(size, f"ct{size}")
    cfg = load_config(name)
    if cfg.model.image_size != size:
        cfg.model.image_size, cfg.model.emb_size = size, max(1, size * cfg.model.emb_size // cfg.model.image_size)
    return model_seam_geometry(cfg.model), name


def score_cost(size: int, preset: str, steps: int = 5) -> dict:
    """What scoring costs training, like for like on this machine: seconds per training iteration of the preset
    (mean of ``steps`` after one warm-up) against one ``quality_score_quick`` (``eval.score_volumes`` renders + the
    headline), the trainer's work at every ``train.val_every``."""
    import torch

    from crfgan.config import load_config
    from crfgan.metrics.quick import headline_state, quality_score_quick
    from crfgan.models import build_networks, build_optimizers
    from crfgan.step import train_step

    cfg = load_config(preset, [f"model.image_size={size}"])
    torch.manual_seed(0)
    nets, rng = build_networks(cfg).train(), np.random.default_rng(0)
    opts = build_optimizers(cfg, nets)
    real = torch.rand(cfg.train.batch_size, 1, size, size, size) * 2 - 1
    train_step(nets, opts, real, 0, cfg, rng)  # warm-up
    t0 = time.perf_counter()
    for it in range(1, steps + 1):
        train_step(nets, opts, real, it, cfg, rng)
    step_s = (time.perf_counter() - t0) / steps
    state = headline_state(np.random.default_rng(1).uniform(-1, 1, (8, size, size, size)).astype(np.float32), cfg)
    t0 = time.perf_counter()
    quality_score_quick(nets.g, cfg, state)
    score_s = time.perf_counter() - t0
    window_s = cfg.train.val_every * step_s
    return {"size": size, "preset": preset, "batch": cfg.train.batch_size, "s_per_iteration": round(step_s, 3),
            "val_every": cfg.train.val_every, "score_volumes": cfg.eval.score_volumes, "score_s": round(score_s, 2),
            "cost_pct": round(100 * score_s / (window_s + score_s), 2)}


def run(args) -> None:
    from importlib.resources import files

    from .table import emit

    if args.cost:
        rows = [score_cost(size, args.config or {32: "tiny", 64: "ct64"}.get(size, f"ct{size}")) for size in args.sizes]
        emit("What quality_score costs training: one score (eval.score_volumes renders + the headline) per "
             "train.val_every iterations, against the preset's CPU training step on this machine", rows, args.json)
        return
    if args.volumes < 4 or args.seeds < 2:
        raise SystemExit("crfgan bench metrics: --volumes must be >= 4 and --seeds >= 2 (z needs a floor spread)")
    scan = args.scan or str(files("crfgan") / "data" / "example_ct.nii.gz")
    src = ct_source(scan, args.spacing)
    tables, rows = {}, []
    for size in args.sizes:
        geometry, preset_name = _geometry(size, args.config)
        s = summarise(suite(size, args.volumes, args.seeds, src, geometry, with_fd=args.with_fd))
        tables[size] = {"geometry": {"border_period": geometry[0], "grid": geometry[1], "preset": preset_name}, **s}
        fl = {"size": size, "set": "floor (held-out real)"}
        fl.update({k: f"{v['floor_mean']:.3g} ± {v['floor_sd']:.2g}" for k, v in s["floor"].items()})
        rows.append(fl)
        for row, ms in s["rows"].items():
            r = {"size": size, "set": row}
            for k, v in ms.items():
                mark = "" if v["detected"] is None else (" ✓" if v["detected"] else " ✗")
                r[k] = "n/a" if v["detected"] is None else f"{v['mean']:.3g} (z {v['z']:.1f}){mark}"
            rows.append(r)
    emit(f"Degradation suite: {args.volumes} volumes per set, {args.seeds} seeds, crops of {scan.split('/')[-1]} "
         f"at {args.spacing:g} mm (✓: worse than the floor in every seed and z ≥ 3)", rows, args.json,
         extra={"tables": {str(k): v for k, v in tables.items()}, "volumes": args.volumes, "seeds": args.seeds})
