"""``crfgan bench train``: Ray Train scaling (1 vs 2 CPU workers, tiny) and overhead vs the single-process trainer.

1. Scaling: samples/s of the tiny config (32³) with 1 and 2 Ray Train workers of 1 CPU each (DDP over gloo);
   ratio = samples/s(2) / samples/s(1), ideally 2 on 2 free cores.
2. Overhead at 64³ (``ct64``): seconds per iteration of Ray Train with one worker (Ray Data streaming, the report
   barrier, checkpoint at the end) vs ``crfgan.trainer.train_local`` on the same volumes in memory, with the same
   torch thread count. Target: ≤ 15 %.
Both use steady-state rates: the time from the first report (or log line) to the last, so Ray start-up and the
first, slower iterations are left out on both sides. Data: copies of the shipped real scans (CT + 2 MRI) under
new names, preprocessed by ``pipelines.preprocess`` so every worker streams several volumes per epoch.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

SCANS = ["ct/example_ct.nii.gz", "mri/FLAIR.nii.gz", "mri/MNI152_2009_template.nii.gz"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", default=None, metavar="DIR",
                   help="a folder with ct/example_ct.nii.gz, mri/FLAIR.nii.gz and mri/MNI152_2009_template.nii.gz "
                        "(default: the two scans shipped in the package)")
    p.add_argument("--copies", type=int, default=12, help="scan copies to preprocess (default 12)")
    p.add_argument("--scaling-iters", type=int, default=60, help="tiny iterations per scaling run (default 60)")
    p.add_argument("--overhead-iters", type=int, default=8, help="64³ iterations per overhead run (default 8)")
    p.add_argument("--overhead-config", default="ct64", help="config of the overhead comparison (default ct64)")
    p.add_argument("--threads", type=int, default=1, help="torch threads = CPUs per worker in the overhead runs")
    p.add_argument("--skip-overhead", action="store_true", help="only the scaling rows")


def _shards(cfg, scans: list[Path], copies: int, root: Path) -> str:
    from pipelines.preprocess import run as preprocess

    src = root / f"scans-{cfg.model.image_size}"
    src.mkdir(parents=True)
    for i in range(copies):
        scan = scans[i % len(scans)]
        shutil.copy(scan, src / f"copy{i:03d}_{scan.name}")
    out = root / f"shards-{cfg.model.image_size}"
    preprocess([str(src)], str(out), cfg)
    return str(out)


def _ray_run(cfg, shards: str) -> dict:
    from pipelines.train import run as run_training

    m = run_training(cfg, shards, mlflow_enabled=False)["metrics"]
    its = m["its_per_s_steady"]
    return {"its_per_s": its, "s_per_it": 1 / its, "samples_per_s": its * cfg.train.num_workers * cfg.train.batch_size,
            "peak_mem_mb": m["peak_mem_mb_max"], "data_wait_frac": m["data_wait_frac"]}


def _local_run(cfg, shards: str, threads: int) -> dict:
    import numpy as np
    import torch

    from crfgan.shards import read_volumes
    from crfgan.trainer import train_local

    vols = np.stack([r["volume"] for r in read_volumes(shards, "train")])
    stamps: list[tuple[int, float]] = []
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        train_local(cfg, vols, out_dir=None, device="cpu",
                    log=lambda line: stamps.append((int(line.split()[0].split("=")[1]), time.perf_counter())))
    finally:
        torch.set_num_threads(old)
    (i0, t0), (i1, t1) = stamps[0], stamps[-1]
    its = (i1 - i0) / (t1 - t0)
    return {"its_per_s": its, "s_per_it": 1 / its, "samples_per_s": its * cfg.train.batch_size}


def run(args: argparse.Namespace) -> None:
    measure(args)


def measure(args: argparse.Namespace) -> dict:
    import ray

    from pipelines.bench.table import emit
    from crfgan.config import load_config
    from pipelines.runtime import ensure_ray

    ensure_ray()
    from crfgan.data import shipped_scans

    scans = [Path(args.data_root) / s for s in SCANS] if args.data_root else [Path(p) for p in shipped_scans()]
    missing = [str(s) for s in scans if not s.exists()]
    if missing:
        raise FileNotFoundError(f"real scans missing: {missing}; pass --data-root")
    rows: list[dict] = []
    extra: dict = {"cluster_cpus": ray.cluster_resources().get("CPU")}
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        root = Path(tmp)
        base = load_config("tiny")
        tiny_shards = _shards(base, scans, args.copies, root)
        n = args.scaling_iters
        every = max(1, n // 6)
        for workers in (1, 2):
            cfg = load_config("tiny", [f"train.iterations={n}", f"train.num_workers={workers}", "train.cpus_per_worker=1",
                                       f"train.log_every={every}", f"train.checkpoint_every={n}", f"train.val_every={n}",
                                       f"train.storage_path={root / 'runs'}", f"train.run_name=scale{workers}"])
            r = _ray_run(cfg, tiny_shards)
            rows.append({"case": "scaling tiny 32³", "runner": "ray-train", "workers": workers, "threads": 1, **r})
        ratio = rows[1]["samples_per_s"] / rows[0]["samples_per_s"]
        extra["scaling_ratio_2_vs_1"] = ratio
        if not args.skip_overhead:
            k = args.overhead_iters
            ov = [f"train.iterations={k}", "train.num_workers=1", f"train.cpus_per_worker={args.threads}",
                  "train.log_every=2", f"train.checkpoint_every={k}", f"train.val_every={k}",
                  f"train.storage_path={root / 'runs'}", "train.run_name=overhead"]
            cfg = load_config(args.overhead_config, ov)
            shards = _shards(cfg, scans, min(args.copies, 6), root)
            local = _local_run(cfg, shards, args.threads)
            rows.append({"case": f"overhead {cfg.name} {cfg.model.image_size}³", "runner": "train_local", "workers": 1,
                         "threads": args.threads, **local})
            r = _ray_run(cfg, shards)
            rows.append({"case": f"overhead {cfg.name} {cfg.model.image_size}³", "runner": "ray-train", "workers": 1,
                         "threads": args.threads, **r})
            extra["overhead_pct"] = 100 * (r["s_per_it"] / local["s_per_it"] - 1)
    emit("Ray Train: scaling (tiny) and overhead vs single process", rows, getattr(args, "json", None), extra)
    summary = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in extra.items())
    print(f"{summary}  (overhead target ≤ 15 %)", flush=True)
    return {"rows": rows, **extra}
