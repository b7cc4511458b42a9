"""``crfgan demo``: the main job end to end on the real scans shipped in the package, with embedded defaults.

1. preprocess the shipped CT and MRI scans with Ray Data (a local Ray) into Parquet shards;
2. train the ``tiny`` CRF-GAN on those shards with Ray Train (one worker), tracked in MLflow (a local sqlite file),
   which registers the generator with the alias ``candidate``;
3. load ``models:/<name>@candidate`` back from the MLflow registry, render synthetic volumes with the halo-tiled
   renderer, and write them as NIfTI (spacing of the training data) with a JSON provenance sidecar.
Everything goes under ``--out`` (default ``outputs/demo``); it finishes in a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import json
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
    p.add_argument("--address", default=None, metavar="URL",
                   help="run the chain as Ray jobs on this cluster's job server (e.g. http://127.0.0.1:8265, make up)")
    p.add_argument("--prefix", default="s3://crfgan/demo", metavar="S3_URI",
                   help="with --address: where scans, shards and checkpoints go (default s3://crfgan/demo)")
    add_config_arguments(p, default="tiny")


def synthesize(model: tuple[str, str], tracking_uri: str, run_id: str, out_dir: Path, n: int, seed: int, spacing,
               cfg) -> list[Path]:
    """Render ``n`` volumes from a registered model and write ``synthetic_XXX.nii.gz`` + ``.json`` sidecars."""
    import mlflow
    import numpy as np

    import crfgan
    from crfgan.io import write_nifti

    name, version = model
    mlflow.set_tracking_uri(tracking_uri)
    pyfunc = mlflow.pyfunc.load_model(f"models:/{name}@candidate")
    seeds = np.arange(seed, seed + n)
    volumes = pyfunc.predict(seeds)  # (n, S, S, S) in [-1, 1]
    s = cfg.synth
    written = []
    for i, (sd, vol) in enumerate(zip(seeds, volumes)):
        path = out_dir / f"synthetic_{i:03d}.nii.gz"
        write_nifti(vol, spacing, path)
        sidecar = {"model": name, "version": version, "alias": "candidate", "run_id": run_id, "seed": int(sd),
                   "config_hash": cfg.hash(), "package_version": crfgan.__version__, "spacing_zyx_mm": list(spacing),
                   "render": {"tiled": s.tiled, "slab": s.slab_embedding_slices, "halo": s.halo,
                              "norm_stats": s.norm_stats}}
        tmp = path.parent / f".synthetic_{i:03d}.json.tmp"
        tmp.write_text(json.dumps(sidecar, indent=2))
        tmp.replace(path.parent / f"synthetic_{i:03d}.json")
        written.append(path)
    return written


def main(args) -> int:
    import numpy as np

    from crfgan.shards import read_volumes

    from . import preprocess
    from .train import run_training

    if args.address:
        from .jobs import demo

        return demo(args)
    cfg = config_from_args(args)
    out = Path(args.out).resolve()
    cfg.train.storage_path = str(out / "runs")
    cfg.train.run_name = "demo"
    t0 = time.perf_counter()
    print(f"[1/3] preprocessing {len(SHIPPED)} shipped scans with Ray Data → {out / 'shards'}", flush=True)
    manifest = preprocess.run(shipped_scans(), str(out / "shards"), cfg)
    print(f"      {manifest['volumes_ok']} volumes ok, {manifest['volumes_failed']} failed", flush=True)
    spacing = tuple(np.mean([r["spacing"] for r in read_volumes(str(out / "shards"), split=None)], axis=0))

    print(f"[2/3] training {cfg.model.arch} ({cfg.name}, {cfg.model.image_size}³) for {cfg.train.iterations} "
          f"iterations with Ray Train ({cfg.train.num_workers} worker), tracked in MLflow", flush=True)
    summary = run_training(cfg, str(out / "shards"))
    if summary["model"] is None:
        print("demo: training produced no checkpoint to register", flush=True)
        return 1

    name, version = summary["model"]
    print(f"[3/3] rendering {args.volumes} synthetic volumes from models:/{name}@candidate (version {version})",
          flush=True)
    (out / "synthetic").mkdir(parents=True, exist_ok=True)
    paths = synthesize(summary["model"], summary["tracking_uri"], summary["run_id"], out / "synthetic", args.volumes,
                       cfg.synth.seed, spacing, cfg)
    metrics = summary["metrics"]
    print(f"\ndone in {time.perf_counter() - t0:.0f} s")
    print(f"  shards:     {out / 'shards'} (manifest.json, errors.parquet)")
    print(f"  training:   {summary['checkpoint']}")
    print(f"  MLflow:     {summary['tracking_uri']} (run {summary['run_id']}, model {name} v{version} @candidate)")
    print(f"  synthetic:  {', '.join(str(p) for p in paths)}")
    print("  final losses: " + ", ".join(f"{k}={metrics[k]:.3f}" for k in ("d_loss", "g_loss", "crf_loss", "e_loss")
                                        if k in metrics))
    return 0
