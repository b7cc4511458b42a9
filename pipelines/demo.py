"""``crfgan demo``: the main job end to end on the real scans shipped in the package, with embedded defaults.

1. preprocess the shipped CT and MRI scans with Ray Data (a local Ray) into Parquet shards;
2. train the ``tiny`` CRF-GAN on those shards with Ray Train (one worker), tracked in MLflow (a local sqlite file),
   which registers the generator with the alias ``candidate``;
3. render synthetic volumes from ``models:/<name>@candidate`` with the ``crfgan synthesize`` job (Ray Data actors,
   halo-tiled renderer): NIfTI with the spacing and intensity mapping the model recorded, a JSON sidecar each.
Everything goes under ``--out`` (default ``outputs/demo``); it finishes in a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import time
from importlib import resources
from pathlib import Path

from .args import add_config_arguments, config_from_args

SHIPPED = ("example_ct.nii.gz", "FLAIR.nii.gz")


def shipped_scans() -> list[str]:
    base = resources.files("crfgan.data")
    paths = [str(base / name) for name in SHIPPED]
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"shipped scans missing from the installed package: {missing}")
    return paths


def add_arguments(p) -> None:
    p.add_argument("--out", default="outputs/demo", help="output folder (default outputs/demo)")
    p.add_argument("--volumes", type=int, default=2, help="synthetic volumes to render (default 2)")
    add_config_arguments(p, default="tiny")


def main(args) -> int:
    from . import preprocess
    from .synthesize import run_job
    from .train import run_training

    cfg = config_from_args(args)
    out = Path(args.out).resolve()
    cfg.train.storage_path = str(out / "runs")
    cfg.train.run_name = "demo"
    t0 = time.perf_counter()
    print(f"[1/3] preprocessing {len(SHIPPED)} shipped scans with Ray Data → {out / 'shards'}", flush=True)
    manifest = preprocess.run(shipped_scans(), str(out / "shards"), cfg)
    print(f"      {manifest['volumes_ok']} volumes ok, {manifest['volumes_failed']} failed", flush=True)

    print(f"[2/3] training {cfg.model.arch} ({cfg.name}, {cfg.model.image_size}³) for {cfg.train.iterations} "
          f"iterations with Ray Train ({cfg.train.num_workers} worker), tracked in MLflow", flush=True)
    summary = run_training(cfg, str(out / "shards"))
    if summary["model"] is None:
        print("demo: training produced no checkpoint to register", flush=True)
        return 1

    name, version = summary["model"]
    print(f"[3/3] rendering {args.volumes} synthetic volumes from models:/{name}@candidate (version {version})",
          flush=True)
    job = run_job(f"models:/{name}@candidate", args.volumes, str(out / "synthetic"), cfg, seed=cfg.synth.seed,
                  tracking_uri=summary["tracking_uri"])
    paths = sorted((out / "synthetic").glob("synthetic_*.nii.gz"))
    if job["counts"]["failed"]:
        return 1
    metrics = summary["metrics"]
    print(f"\ndone in {time.perf_counter() - t0:.0f} s")
    print(f"  shards:     {out / 'shards'} (manifest.json, errors.parquet)")
    print(f"  training:   {summary['checkpoint']}")
    print(f"  MLflow:     {summary['tracking_uri']} (run {summary['run_id']}, model {name} v{version} @candidate)")
    print(f"  synthetic:  {', '.join(str(p) for p in paths)}")
    print("  final losses: " + ", ".join(f"{k}={metrics[k]:.3f}" for k in ("d_loss", "g_loss", "crf_loss", "e_loss")
                                        if k in metrics))
    return 0
