"""The ``crfgan`` command: one entry point per pipeline stage, plus benchmarks and the demo.

Every stage takes ``--config NAME_OR_PATH`` (a preset from crfgan/configs or a YAML file) and trailing dotted
overrides such as ``model.crf.iterations=5``. Heavy imports (torch, ray, mlflow) happen inside the stage.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name → (module, help). Each module has add_arguments(parser) and main(args) -> int.
STAGES = {
    "preprocess": ("pipelines.preprocess", "CT/MRI scans or archives (local or s3://) → Parquet shards (Ray Data)"),
    "train": ("pipelines.train", "train CRF-GAN or the HA-GAN baseline (Ray Train, or --local in one process)"),
    "tune": ("pipelines.tune", "hyperparameter sweep of training (Ray Tune, ASHA, MLflow parent/child runs)"),
    "evaluate": ("pipelines.evaluate", "synthetic volume sets against real ones: metrics.json + HTML/Markdown report"),
    "compare": ("pipelines.compare", "CRF-GAN variants vs HA-GAN: same data, budget and seeds; one evaluated table"),
    "demo": ("pipelines.demo", "end-to-end run on the shipped real scans (local Ray, local files)"),
    "config": ("pipelines.show_config", "print a resolved config (preset + overrides) as YAML"),
}

# name → (module, help). Each module has add_arguments(parser) and run(args).
BENCHES = {
    "train-step": ("crfgan.bench.train_step", "peak memory and s/iteration, CRF-GAN vs HA-GAN"),
    "render": ("crfgan.bench.render", "halo-tiled vs one-pass full-volume render: error, memory, time"),
    "preprocess": ("pipelines.bench_preprocess", "Ray Data preprocessing vs a single-process loop"),
    "train": ("pipelines.bench_train", "Ray Train scaling and overhead vs the single-process trainer"),
}


def _available(table: dict) -> dict:
    """Stages whose module is installed (each lands with its issue)."""
    return {k: v for k, v in table.items() if importlib.util.find_spec(v[0]) is not None}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="crfgan",
        description="Memory-efficient 3D medical image synthesis with CRF-guided GANs, as a pipeline on Ray.",
        epilog="Examples: crfgan demo | crfgan train --local --data crfgan/data --config tiny train.iterations=50 | "
        "crfgan bench train-step --size 64 --batch 2",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_) in _available(STAGES).items():
        sp = sub.add_parser(name, help=help_, description=help_)
        importlib.import_module(module).add_arguments(sp)
        sp.set_defaults(_run=lambda args, m=module: importlib.import_module(m).main(args))
    bench = sub.add_parser("bench", help="benchmarks (print a table; --json PATH writes the figures)")
    bsub = bench.add_subparsers(dest="bench", required=True, metavar="BENCH")
    for name, (module, help_) in _available(BENCHES).items():
        bp = bsub.add_parser(name, help=help_, description=help_)
        importlib.import_module(module).add_arguments(bp)
        if not any("--json" in a.option_strings for a in bp._actions):
            bp.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
        bp.set_defaults(_run=lambda args, m=module: importlib.import_module(m).run(args) or 0)
    return p


def main(argv: list[str] | None = None) -> int:
    from crfgan.config import ConfigError

    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except ConfigError as e:
        print(f"crfgan: config error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
