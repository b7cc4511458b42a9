"""``crfgan demo``: the main job end to end on the real scans shipped in the package, with embedded defaults.

1. preprocess the shipped CT and MRI scans with Ray Data (a local Ray) into Parquet shards: both scans train, and a
   held-back central crop of each (written to ``<out>/heldout/``) is the val split (``data.val_sources``), so
   training sees every shipped scan and ``val_l1`` is measured on volumes it never trains on;
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
    add_config_arguments(p, default="tiny")


def synthesize(model: tuple[str, str], tracking_uri: str, run_id: str, out_dir: Path, n: int, seed: int, spacing,
               cfg) -> list[Path]:
    """Render ``n`` volumes from a registered model and write ``synthetic_XXX.nii.gz`` + ``.json`` sidecars."""
    import mlflow
    import numpy as np

    import crfgan
    from crfgan.io import write_nifti
    from crfgan.storage import write_text_atomic

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
        write_text_atomic(path.parent / f"synthetic_{i:03d}.json", json.dumps(sidecar, indent=2))
        written.append(path)
    return written


def main(args) -> int:
    import numpy as np

    from crfgan.shards import read_volumes

    from . import preprocess
    from .train import run_training

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
    val = metrics.get("val_l1")
    print("\n" + EXPLANATION.format(size=cfg.model.image_size, iters=cfg.train.iterations,
                                    n_train=manifest["counts"]["split"].get("train", 0),
                                    val=f"{val:.3f}" if isinstance(val, (int, float)) else "n/a"), end="")
    return 0
