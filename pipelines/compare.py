"""``crfgan compare``: CRF-GAN variants against HA-GAN with the same data, budget and seeds, evaluated the same way.

    crfgan compare --data SHARDS_URI --out DIR --config ct64 --seeds 0,1 --volumes 8 [--augment 64] [key=value …]
    crfgan compare --data TRAIN_SHARDS --real HELD_OUT_SHARDS --floor SECOND_HELD_OUT_SHARDS …   (e.g. phantoms)

Variants (each on top of the config and overrides; nothing depends on the presets' defaults):
  crfgan-ref     model.crf.nodes=channels train.share_fakes=false   the reference code's CRF-GAN
  crfgan-slabs   model.crf.nodes=slabs    train.share_fakes=false   CRF nodes = depth slabs of A
  crfgan-shared  model.crf.nodes=channels train.share_fakes=true    one G forward feeds the D, G and CRF sub-steps
  hagan          model.arch=hagan         train.share_fakes=false   the HA-GAN baseline

For every (variant, seed) a Ray task trains ``train.iterations`` iterations with ``train.seed=seed`` on the train
split of the shards (``crfgan.trainer.train_local`` in the task, a fresh worker process per task so its peak memory
is that run's: one GPU per task with ``train.use_gpu=true``, else ``train.cpus_per_worker`` CPUs), saves the
generator, and renders ``--volumes`` volumes from the same latent seeds with the generator it exports (the EMA copy
when ``train.ema_decay`` > 0). Each run writes ``runs/VARIANT-sSEED/result.json`` (seconds per iteration, peak
memory, last losses) as it finishes. Then, per seed, ``crfgan evaluate``'s ``evaluate_sets`` scores all variants
against one real reference set with one extractor; the table gives mean ± half-range over seeds (with two seeds, the
half-range is the distance of each seed from the mean), seconds per iteration and peak memory, and for every variant
but the baseline (``hagan`` when it runs, else the first) whether it is better or worse than the baseline outside
the seed spread: the ranges over seeds of the distance to the metric's ideal do not overlap. On a cluster the same
command runs the tasks in parallel on as many GPUs as there are.

The real reference (``--real``, default the shards' own volumes) and a real-vs-real floor (``--floor``: a second
held-out shard dataset, scored like a variant as ``real-floor``; each variant's ``quality_vs_floor`` is its
``quality_score`` over the floor's) make the scores readable on a controlled test bed such as ``phantom://`` sets.

Training augmentation (``--augment K``, for tiny datasets): K copies of the train volumes, each a random isotropic
box of 70–100 % of the cube resized back to S³, mirrored left-right with probability ½; the real reference set is
another ``--volumes`` draws of the same augmentation (another seed), so it is a fresh sample of the training
distribution. ``--augment 0`` uses the volumes as they are (the real reference is every volume of the shards).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from pipelines.args import add_config_arguments

VARIANTS = {
    "crfgan-ref": ["model.arch=crfgan", "model.crf.nodes=channels", "train.share_fakes=false"],
    "crfgan-slabs": ["model.arch=crfgan", "model.crf.nodes=slabs", "train.share_fakes=false"],
    "crfgan-shared": ["model.arch=crfgan", "model.crf.nodes=channels", "train.share_fakes=true"],
    "hagan": ["model.arch=hagan", "train.share_fakes=false"],
}
SYNTH_SEED = 5000  # latent seeds SYNTH_SEED … + volumes − 1, the same for every variant and training seed


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, metavar="URI", help="shard dataset from crfgan preprocess")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder: runs, synthetic NIfTI, reports, table")
    p.add_argument("--seeds", default="0,1", help="training seeds, comma-separated (default 0,1)")
    p.add_argument("--volumes", type=int, default=8, help="synthetic volumes per run, and real reference volumes")
    p.add_argument("--augment", type=int, default=0, metavar="K",
                   help="train on K random crop/flip copies of the train volumes (0: the volumes as they are)")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"subset of {','.join(VARIANTS)}")
    p.add_argument("--real", default="", metavar="URI",
                   help="held-out shard dataset as the real reference (default: the --data volumes)")
    p.add_argument("--floor", default="", metavar="URI",
                   help="a second held-out shard dataset scored as 'real-floor' (the real-vs-real floor)")
    add_config_arguments(p, default="ct64")


def augment(volumes: np.ndarray, k: int, seed: int) -> np.ndarray:
    """``k`` random isotropic boxes (70–100 % of the edge) of random volumes, resized to S³, mirrored with p = ½."""
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(seed)
    n, s = len(volumes), volumes.shape[1]
    out = np.empty((k, s, s, s), np.float32)
    for i in range(k):
        v = volumes[rng.integers(n)]
        e = int(round(s * rng.uniform(0.7, 1.0)))
        a = [int(rng.integers(0, s - e + 1)) for _ in range(3)]
        box = torch.from_numpy(np.ascontiguousarray(v[a[0]:a[0] + e, a[1]:a[1] + e, a[2]:a[2] + e]))[None, None]
        x = F.interpolate(box, size=(s, s, s), mode="trilinear", align_corners=False)[0, 0].numpy()
        out[i] = x[:, :, ::-1] if rng.random() < 0.5 else x
    return np.clip(out, -1, 1)


def train_and_render(cfg_dict: dict, volumes: np.ndarray, out_dir: str, n: int, threads: int) -> dict:
    """One (variant, seed): train in this process, export the generator, render ``n`` volumes (seeds SYNTH_SEED…)."""
    import torch

    from crfgan.config import config_from_dict
    from crfgan.io import write_nifti
    from crfgan.memory import peak_memory_mb
    from crfgan.storage import atomic_local_path
    from crfgan.trainer import train_local

    if threads:
        torch.set_num_threads(threads)
    cfg = config_from_dict(cfg_dict)
    dev = "cuda" if cfg.train.use_gpu and torch.cuda.is_available() else "cpu"
    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()
    log_path = Path(out_dir) / "train.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as lf:
        res = train_local(cfg, volumes, out_dir=Path(out_dir) / "run", device=dev,
                          log=lambda s: (lf.write(s + "\n"), lf.flush()))
    peak = peak_memory_mb(torch.device(dev))
    g = res.nets.eval_generator().eval()
    sy = cfg.synth
    vols = []
    with torch.no_grad():
        for i in range(n):
            z = torch.randn(1, cfg.model.latent_dim, generator=torch.Generator().manual_seed(SYNTH_SEED + i)).to(dev)
            v = g.render(z, tiled=sy.tiled, slab=sy.slab_embedding_slices, halo=sy.halo, norm_stats=sy.norm_stats)
            vols.append(v[0, 0].float().cpu().numpy())
    vols = np.stack(vols)
    for i, v in enumerate(vols):
        write_nifti(v, (1.0, 1.0, 1.0), Path(out_dir) / "synthetic" / f"synthetic_{i:03d}.nii.gz")
    trained = res.iterations - res.start_iteration
    info = {"seconds": res.seconds, "iterations": res.iterations,
            "s_per_iteration": res.seconds / trained if trained > 0 else float("nan"),
            "peak_memory_mb": peak, "peak_memory_kind": "cuda allocated" if dev == "cuda" else "process RSS",
            "ema": cfg.train.ema_decay > 0, "last": res.history[-1] if res.history else {}}
    with atomic_local_path(Path(out_dir) / "result.json") as tmp:
        Path(tmp).write_text(json.dumps(info, indent=2, default=float))
    return {"volumes": vols, **info}


def _fmt(mean: float, half: float) -> str:
    if not np.isfinite(mean):
        return "nan"
    return f"{mean:.4g} ± {half:.2g}"


FLOOR = "real-floor"
RUN_KEYS = ("s_per_iteration", "peak_memory_mb")  # per run, from result.json, not from the evaluation


def distance_to_ideal(metric: str, x: float) -> float | None:
    """How far ``x`` is from the metric's ideal (``crfgan.metrics.compute.IDEAL``), so that smaller is better for
    every metric; None where no direction is defined."""
    from crfgan.metrics.compute import IDEAL

    if metric in RUN_KEYS or metric in ("quality_score", "quality_vs_floor"):
        return x  # lower is better (the floor is not reachable from below in practice)
    ideal = IDEAL.get(metric, "")
    if ideal.startswith("≳1"):
        return max(0.0, 1.0 - x)
    if ideal.startswith(("1", "≈1")):
        return abs(x - 1.0)
    if ideal.startswith("0"):
        return abs(x)
    return None


def verdict(metric: str, xs, base) -> str:
    """"better"/"worse" than the baseline when the ranges over seeds of the distance to the ideal do not overlap,
    else "within spread"; "—" with fewer than two seeds on either side (no spread to be outside of) or for a
    metric without a direction."""
    dx = [distance_to_ideal(metric, float(x)) for x in xs if np.isfinite(x)]
    db = [distance_to_ideal(metric, float(x)) for x in base if np.isfinite(x)]
    if len(dx) < 2 or len(db) < 2 or None in dx or None in db:
        return "—"
    if max(dx) < min(db):
        return "better"
    if min(dx) > max(db):
        return "worse"
    return "within spread"


def summarise(per_seed: dict[int, dict], variants: list[str], runs: dict | None = None,
              baseline: str | None = None) -> tuple[list[str], list[list[str]], dict]:
    """Mean ± half-range over seeds for every metric and variant (``runs``: {(variant, seed): result} adds seconds
    per iteration and peak memory), and each variant's verdict against ``baseline``."""
    keys = [k for k in dict.fromkeys(k for m in per_seed.values() for v in m.values() for k in v)
            if not k.startswith("n_") and k not in ("ms_ssim_real", "nn_rmse_real", "seam_score_real")]
    if runs:
        keys += list(RUN_KEYS)
    agg: dict = {}
    for v in variants:
        agg[v] = {}
        for k in keys:
            if k in RUN_KEYS:
                xs = np.array([runs.get((v, s), {}).get(k, np.nan) for s in per_seed], dtype=float)
            else:
                xs = np.array([per_seed[s][v].get(k, np.nan) for s in per_seed], dtype=float)
            agg[v][k] = {"mean": float(np.nanmean(xs)) if np.isfinite(xs).any() else float("nan"),
                         "half_range": float((np.nanmax(xs) - np.nanmin(xs)) / 2) if np.isfinite(xs).any() else float("nan"),
                         "values": xs.tolist()}
    others = [v for v in variants if v != baseline and v != FLOOR] if baseline else []
    header = ["metric", *variants, *[f"{v} vs {baseline}" for v in others]]
    rows = []
    for k in keys:
        row = [k, *[_fmt(agg[v][k]["mean"], agg[v][k]["half_range"]) for v in variants]]
        for v in others:
            agg[v][k]["vs_" + baseline] = verdict(k, agg[v][k]["values"], agg[baseline][k]["values"])
            row.append(agg[v][k]["vs_" + baseline])
        rows.append(row)
    return header, rows, agg


def main(args: argparse.Namespace) -> int:
    from crfgan.config import load_config
    from crfgan.metrics.sets import VolumeSet, load_shards
    from pipelines.evaluate import evaluate_sets
    from pipelines.runtime import ensure_ray

    t0 = time.perf_counter()
    base = load_config(args.config, args.overrides)
    seeds = [int(s) for s in str(args.seeds).split(",") if s.strip()]
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or len(seeds) < 1:
        print(f"compare: unknown variants {unknown} (known: {', '.join(VARIANTS)}) or no seeds", file=sys.stderr)
        return 2
    if args.augment and args.real:
        print("compare: --augment draws its own real reference; leave out --real or --augment", file=sys.stderr)
        return 2
    out = Path(args.out).resolve()
    ep = base.data.s3_endpoint
    shards = load_shards(args.data, "real", ep)
    train = shards.train if shards.train is not None else shards.volumes
    s = base.model.image_size
    held = {k: load_shards(u, k, ep) for k, u in (("real", args.real), (FLOOR, args.floor)) if u}
    for st in (shards, *held.values()):
        if st.volumes.shape[1] != s:
            print(f"compare: {st.uri} holds {st.volumes.shape[1]}³ volumes but model.image_size={s}", file=sys.stderr)
            return 2
    if args.augment:
        train_vols = augment(train, args.augment, seed=12345)
        real = augment(train, args.volumes, seed=54321)
    elif args.real:
        train_vols, real = train, held["real"].volumes
    else:
        train_vols, real = train, shards.volumes  # every real volume (nn_ratio is leave-one-out for them)
    print(f"[compare] {len(variants)} variants × seeds {seeds}: {base.train.iterations} iterations each on "
          f"{len(train_vols)} training volumes ({s}³{', augmented' if args.augment else ''}); "
          f"{args.volumes} volumes each against {len(real)} real", flush=True)

    ray = ensure_ray()
    t = base.train
    # max_calls=1: a fresh worker process per run, so its peak memory is that run's alone
    task = ray.remote(num_cpus=t.cpus_per_worker, num_gpus=1 if t.use_gpu else 0, max_calls=1)(train_and_render)
    vol_ref = ray.put(train_vols)
    futures = {}
    for seed in seeds:
        for v in variants:
            cfg = load_config(args.config, [*args.overrides, *VARIANTS[v], f"train.seed={seed}"])
            futures[(v, seed)] = task.remote(cfg.to_dict(), vol_ref, str(out / "runs" / f"{v}-s{seed}"), args.volumes,
                                             t.cpus_per_worker)
    results = {}
    for key, f in futures.items():
        results[key] = ray.get(f)
        r = results[key]
        print(f"[compare] {key[0]} seed {key[1]}: {r['iterations']} iterations in {r['seconds']:.0f} s "
              f"({r['s_per_iteration']:.3g} s/iteration, peak {r['peak_memory_mb']:.0f} MB {r['peak_memory_kind']})",
              flush=True)

    if args.real:
        # the extractor trains on train_vols (from --data): the cache key names both datasets
        real_set = VolumeSet("real", args.real, real, held["real"].modality, held["real"].ct_window,
                             f"{shards.data_hash}+{held['real'].data_hash}", train_vols)
    else:
        real_set = VolumeSet("real", f"{args.data} ({'augmented' if args.augment else 'as is'})", real, shards.modality,
                             shards.ct_window, shards.data_hash + (f"-aug{args.augment}" if args.augment else ""),
                             train_vols)
    per_seed = {}
    for seed in seeds:
        sets = [VolumeSet(v, str(out / "runs" / f"{v}-s{seed}" / "synthetic"), results[(v, seed)]["volumes"],
                          shards.modality, shards.ct_window) for v in variants]
        if FLOOR in held:
            sets.append(VolumeSet(FLOOR, args.floor, held[FLOOR].volumes, held[FLOOR].modality, held[FLOOR].ct_window))
        res = evaluate_sets(load_config(args.config, args.overrides), real_set, sets, str(out / "reports" / f"seed{seed}"),
                            str(out / "eval-cache"))
        m = res["metrics"]
        if FLOOR in m:
            m[FLOOR]["quality_vs_floor"] = 1.0
            for v in variants:
                m[v]["quality_vs_floor"] = m[v]["quality_score"] / max(m[FLOOR]["quality_score"], 1e-12)
        per_seed[seed] = m
    shown = [*variants, FLOOR] if FLOOR in held else variants
    baseline = "hagan" if "hagan" in variants else variants[0]
    header, rows, agg = summarise(per_seed, shown, results, baseline if len(variants) > 1 else None)
    budget = {"iterations": t.iterations, "batch_size": t.batch_size, "image_size": s, "seeds": seeds,
              "train_volumes": len(train_vols), "augment": args.augment, "volumes": args.volumes,
              "real": args.real or args.data, "floor": args.floor or None, "baseline": baseline,
              "seconds": {f"{v}-s{sd}": round(results[(v, sd)]["seconds"], 1) for v, sd in results}}
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]
    text = (f"# crfgan compare\n\nConfig `{args.config}` {' '.join(args.overrides)}; {json.dumps(budget)}\n\n"
            f"Mean ± half-range over the seeds; a verdict column says whether a variant is better or worse than "
            f"{baseline} outside the seed spread (the ranges over seeds of the distance to the metric's ideal do not "
            "overlap). Per-seed reports (montages, histograms, spectra, seam profiles): "
            + ", ".join(f"[seed {sd}](reports/seed{sd}/index.html)" for sd in seeds) + "\n\n" + "\n".join(md) + "\n")
    from crfgan.storage import atomic_local_path

    with atomic_local_path(out / "compare.md") as tmp:
        Path(tmp).write_text(text)
    with atomic_local_path(out / "compare.json") as tmp:
        Path(tmp).write_text(json.dumps({"budget": budget, "per_seed": per_seed, "summary": agg}, indent=2, default=float))
    print("\n".join(md))
    print(f"[compare] done in {time.perf_counter() - t0:.0f} s → {out / 'compare.md'}")
    return 0

