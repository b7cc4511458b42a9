"""``crfgan bench synthesize``: volumes per minute of ``crfgan synthesize`` with 1 and 2 actors, and where the time goes.

Models are untrained generators at the reference widths (``ct64`` / ``ct128`` presets) exported to a folder, so the
figures measure the job (render, encode, write), not a training run. Two tables:

1. gzip: encoding one rendered int16 volume (header + gzip) with each implementation and level — milliseconds and
   compression ratio; this is what picked the default ``synth.gzip=isal``, ``synth.gzip_level=2``.
2. jobs: volumes/min over the job's wall time (model load, actor start-up included) and ``steady`` (from the first
   volume's start to the last one's end), the share of the actors' busy time spent rendering vs writing (encode +
   atomic write), and the speed-up of N actors over 1 at the same size.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

GZIP_CASES = (("zlib", 1), ("zlib", 6), ("zlib-ng", 1), ("zlib-ng", 6), ("isal", 1), ("isal", 2), ("isal", 3))


def add_arguments(p) -> None:
    p.add_argument("--size", default="64,128", help="comma-separated sizes (default 64,128)")
    p.add_argument("--actors", default="1,2", help="comma-separated actor counts (default 1,2)")
    p.add_argument("--volumes", type=int, default=8, help="volumes per job (default 8)")
    p.add_argument("--out", default=None, help="output folder or s3:// prefix (default: a temporary folder)")


def _export(size: int, folder: Path) -> Path:
    import torch

    from crfgan.checkpoint import save_generator
    from crfgan.config import load_config
    from crfgan.generator import Generator
    from crfgan.synth import generator_metadata

    from crfgan.config import preset_names

    # reference widths where a preset exists (ct64, ct128, ct256, ct512); other sizes: tiny widths (tests)
    cfg = load_config(f"ct{size}") if f"ct{size}" in preset_names() else load_config("tiny", [f"model.image_size={size}"])
    torch.manual_seed(0)
    return save_generator(folder / f"ct{size}", cfg, Generator(cfg.model), {}, generator_metadata(cfg, [1.0] * 3, ["ct"]))


def gzip_rows(gdir: Path, size: int) -> list[dict]:
    import importlib.util

    from crfgan.checkpoint import load_generator
    from crfgan.synth import Synthesizer, encode_nifti

    g = load_generator(gdir)
    q, si = Synthesizer(g, g.config, g.metadata).stored(0)
    raw = len(encode_nifti(q, [1.0] * 3, si, "nii"))
    rows = []
    for impl, level in GZIP_CASES:
        if impl == "zlib-ng" and importlib.util.find_spec("zlib_ng") is None:
            rows.append({"size": size, "gzip": impl, "level": level, "ms": None, "ratio": None, "note": "not installed"})
            continue
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            data = encode_nifti(q, [1.0] * 3, si, "nii.gz", impl, level)
            best = min(best, time.perf_counter() - t0)
        rows.append({"size": size, "gzip": impl, "level": level, "ms": 1000 * best, "ratio": raw / len(data)})
    base = next(r["ms"] for r in rows if r["gzip"] == "zlib" and r["level"] == 6)
    for r in rows:
        r["x_vs_zlib6"] = base / r["ms"] if r["ms"] else None
    return rows


def job_row(gdir: Path, size: int, actors: int, n: int, out: str) -> dict:
    from crfgan.config import load_config
    from pipelines.synthesize import run as run_job

    cfg = load_config(None, [f"synth.actors={actors}"])
    m = run_job(str(gdir), n, out, cfg, log=lambda *_: None)
    s = m["seconds"]
    busy = s["render_s"] + s["encode_s"] + s["write_s"]
    return {"size": size, "actors": actors, "volumes": m["counts"]["written"], "wall_s": m["elapsed_s"],
            "vol_per_min": m["volumes_per_min"],
            "steady_vol_per_min": 60 * m["counts"]["written"] / m["steady_s"] if m["steady_s"] else None,
            "render_pct": 100 * s["render_s"] / busy,
            "write_pct": 100 * (s["encode_s"] + s["write_s"]) / busy,
            "busy_pct_of_steady": 100 * busy / (actors * m["steady_s"]), "peak_rss_mb": m["actor_peak_rss_mb"]}


def run(args) -> None:
    from pipelines.bench.table import emit
    from pipelines.runtime import ensure_ray

    sizes = [int(s) for s in args.size.split(",")]
    actor_counts = [int(a) for a in args.actors.split(",")]
    ray = ensure_ray()
    ray.data.DataContext.get_current().enable_progress_bars = False
    with tempfile.TemporaryDirectory(prefix="crfgan-bench-synth-") as d:
        gz, jobs = [], []
        for size in sizes:
            gdir = _export(size, Path(d))
            gz += gzip_rows(gdir, size)
            for a in actor_counts:
                out = f"{args.out.rstrip('/')}/{size}-{a}-{time.time_ns()}" if args.out else f"{d}/out-{size}-{a}"
                jobs.append(job_row(gdir, size, a, args.volumes, out))
        for r in jobs:
            one = next((j for j in jobs if j["size"] == r["size"] and j["actors"] == 1), None)
            r["x_vs_1_actor"] = r["vol_per_min"] / one["vol_per_min"] if one and one["vol_per_min"] else None
            r["steady_x_vs_1"] = r["steady_vol_per_min"] / one["steady_vol_per_min"] \
                if one and one["steady_vol_per_min"] else None
    cpus = int(ray.cluster_resources().get("CPU", 0))
    emit("gzip: encoding one rendered volume (best of 3; ratio = raw .nii bytes / .nii.gz bytes)", gz)
    emit(f"crfgan synthesize on {cpus} CPUs: {args.volumes} volumes per job, default synth settings (isal level 2)",
         jobs, args.json, extra={"gzip": gz})
