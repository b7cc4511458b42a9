"""``crfgan demo``: the main job end to end on the real scans shipped in the package, with embedded defaults.

1. preprocess the shipped CT and MRI scans with Ray Data (a local Ray) into Parquet shards: both scans train, and a
   held-back central crop of each (written to ``<out>/heldout/``) is the val split (``data.val_sources``), so
   training sees every shipped scan and ``val_l1`` is measured on volumes it never trains on;
2. train the ``tiny`` CRF-GAN on those shards with Ray Train (one worker), tracked in MLflow (a local sqlite file),
   which registers the generator with the alias ``candidate``;
3. render synthetic volumes from ``models:/<name>@candidate`` with the ``crfgan synthesize`` job (Ray Data actors,
   halo-tiled renderer): NIfTI with the spacing and intensity mapping the model recorded, a JSON sidecar each.
Everything goes under ``--out`` (default ``outputs/demo``); it finishes in a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import time
from pathlib import Path

from crfgan.data import SHIPPED, shipped_scans

from .args import add_config_arguments, config_from_args

HELD_OUT_FRACTION = 0.625  # the crop keeps this fraction of the x and y extent, all of z


def held_out_crops(scans: list[str], folder: Path) -> list[str]:
    """A central crop (x and y) of each scan as NIfTI under ``folder``: validation volumes the demo never trains on."""
    import numpy as np

    from crfgan.io import load_scan, write_nifti

    out = []
    for path in scans:
        scan = load_scan(path)  # (x, y, z) RAS
        a = scan.array
        keep = [max(1, round(n * HELD_OUT_FRACTION)) for n in a.shape[:2]]
        lo = [(n - k) // 2 for n, k in zip(a.shape[:2], keep)]
        crop = a[lo[0]:lo[0] + keep[0], lo[1]:lo[1] + keep[1], :]
        name = Path(path).name.split(".")[0]
        dst = folder / f"{name}_centre_crop.nii.gz"
        write_nifti(np.ascontiguousarray(crop.transpose(2, 1, 0)), list(scan.spacing)[::-1], dst)
        out.append(str(dst))
    return out


EXPLANATION = """\
What these samples can and cannot show:
  - They show the whole pipeline working: Ray Data shards, Ray Train checkpoints, the MLflow registry, and the
    halo-tiled renderer writing NIfTI volumes with real spacing.
  - They cannot show image quality. The model is the tiny preset ({size}³, narrow widths), trained for {iters}
    iterations on {n_train} volumes (one CT, one brain MRI, in one unconditional model): far too little to learn
    anatomy, so do not read realism or its absence into them. val_l1 ({val}) is the encoder's reconstruction error on
    held-back central crops of the same two scans: it tracks training, not generalisation to new patients.
  - For real results, preprocess a collection of scans and train a reference preset (ct128, ct256) for the paper's
    80k iterations on a GPU.
"""


def add_arguments(p) -> None:
    p.add_argument("--out", default="outputs/demo", help="output folder (default outputs/demo)")
    p.add_argument("--volumes", type=int, default=2, help="synthetic volumes to render (default 2)")
    p.add_argument("--address", default=None, metavar="URL",
                   help="run the chain as Ray jobs on this cluster's job server (e.g. http://127.0.0.1:8265, make up)")
    p.add_argument("--prefix", default="s3://crfgan/demo", metavar="S3_URI",
                   help="with --address: where scans, shards and checkpoints go (default s3://crfgan/demo)")
    add_config_arguments(p, default="tiny")


def main(args) -> int:
    from . import preprocess
    from .synthesize import run as run_job
    from .train import run as run_training

    if args.address:
        from .jobs import demo

        return demo(args)
    cfg = config_from_args(args)
    out = Path(args.out).resolve()
    cfg.train.storage_path = str(out / "runs")
    cfg.train.run_name = "demo"
    # every shipped scan trains; the held-back crops are the val split (a hash split of two scans would hold one
    # of them out of training)
    cfg.data.val_fraction = 0.0
    cfg.data.val_sources = f"{out / 'heldout'}/*"
    t0 = time.perf_counter()
    print(f"[1/3] preprocessing {len(SHIPPED)} shipped scans (train) and a held-back central crop of each (val) with "
          f"Ray Data → {out / 'shards'}", flush=True)
    scans = shipped_scans()
    manifest = preprocess.run(scans + held_out_crops(scans, out / "heldout"), str(out / "shards"), cfg)
    print(f"      {manifest['volumes_ok']} volumes ok ({manifest['counts']['split']}), {manifest['volumes_failed']} "
          f"failed", flush=True)

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
    val = metrics.get("val_l1")
    print("\n" + EXPLANATION.format(size=cfg.model.image_size, iters=cfg.train.iterations,
                                    n_train=manifest["counts"]["split"].get("train", 0),
                                    val=f"{val:.3f}" if isinstance(val, (int, float)) else "n/a"), end="")
    return 0
