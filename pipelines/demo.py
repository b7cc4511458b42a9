"""``crfgan demo``: the main job end to end on the real scans shipped in the package, with embedded defaults.

1. preprocess the shipped CT and MRI scans with Ray Data (a local Ray) into Parquet shards;
2. train the ``tiny`` CRF-GAN on those shards (single process: the Ray Train stage lands with its issue);
3. render synthetic volumes with the halo-tiled renderer and write them as NIfTI with a JSON sidecar.
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
    add_config_arguments(p, default="tiny")


def synthesize(gen_dir: Path, out_dir: Path, n: int, seed: int, spacing, cfg) -> list[Path]:
    """Render ``n`` volumes from a generator export and write ``synthetic_XXX.nii.gz`` + ``.json`` sidecars."""
    import torch

    import crfgan
    from crfgan.checkpoint import load_generator
    from crfgan.io import write_nifti

    g = load_generator(gen_dir)
    s = cfg.synth
    written = []
    for i in range(n):
        torch.manual_seed(seed + i)
        z = torch.randn(1, g.cfg.latent_dim)
        vol = g.render(z, tiled=s.tiled, slab=s.slab_embedding_slices, halo=s.halo, norm_stats=s.norm_stats)
        path = out_dir / f"synthetic_{i:03d}.nii.gz"
        write_nifti(vol[0, 0].numpy(), spacing, path)
        sidecar = {"generator": str(gen_dir), "seed": seed + i, "config_hash": cfg.hash(),
                   "package_version": crfgan.__version__, "spacing_zyx_mm": list(spacing),
                   "render": {"tiled": s.tiled, "slab": s.slab_embedding_slices, "halo": s.halo,
                              "norm_stats": s.norm_stats}}
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(sidecar, indent=2))
        tmp.replace(path.parent / f"synthetic_{i:03d}.json")
        written.append(path)
    return written


def main(args) -> int:
    import numpy as np

    from crfgan.shards import read_volumes
    from crfgan.trainer import train_local

    from . import preprocess

    cfg = config_from_args(args)
    out = Path(args.out).resolve()
    t0 = time.perf_counter()
    print(f"[1/3] preprocessing {len(SHIPPED)} shipped scans with Ray Data → {out / 'shards'}", flush=True)
    manifest = preprocess.run(shipped_scans(), str(out / "shards"), cfg)
    print(f"      {manifest['volumes_ok']} volumes ok, {manifest['volumes_failed']} failed", flush=True)
    rows = list(read_volumes(str(out / "shards"), split=None))
    volumes = np.stack([r["volume"] for r in rows])
    spacing = tuple(np.mean([r["spacing"] for r in rows], axis=0))

    print(f"[2/3] training {cfg.model.arch} ({cfg.name}, {cfg.model.image_size}³) for "
          f"{cfg.train.iterations} iterations on {len(volumes)} volumes", flush=True)
    result = train_local(cfg, volumes, out / "train", log=lambda line: print("      " + line, flush=True))
    last = result.history[-1]

    print(f"[3/3] rendering {args.volumes} synthetic volumes (tiled, {cfg.synth.norm_stats} statistics)", flush=True)
    (out / "synthetic").mkdir(parents=True, exist_ok=True)
    paths = synthesize(result.generator_path, out / "synthetic", args.volumes, cfg.synth.seed, spacing, cfg)
    print(f"\ndone in {time.perf_counter() - t0:.0f} s")
    print(f"  shards:     {out / 'shards'} (manifest.json)")
    print(f"  generator:  {result.generator_path} (safetensors + config.json)")
    print(f"  synthetic:  {', '.join(str(p) for p in paths)}")
    print("  final losses: " + ", ".join(f"{k}={v:.3f}" for k, v in last.items() if k != "iteration"))
    return 0
