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
    "synthesize": ("pipelines.synthesize", "bulk synthetic volumes from models:/NAME@ALIAS or a checkpoint (Ray Data)"),
    "tune": ("pipelines.tune", "hyperparameter sweep of training (Ray Tune, ASHA, MLflow parent/child runs)"),
    "evaluate": ("pipelines.evaluate", "synthetic volume sets against real ones: metrics.json + HTML/Markdown report"),
    "compare": ("pipelines.compare", "CRF-GAN variants vs HA-GAN: same data, budget and seeds; one evaluated table"),
    "demo": ("pipelines.demo", "end-to-end run on the shipped real scans (local Ray, local files)"),
    "config": ("pipelines.show_config", "print a resolved config (preset + overrides) as YAML"),
}

# name → (module, help). Each module has add_arguments(parser) and run(args).
BENCHES = {
    "train-step": ("pipelines.bench.train_step", "peak memory and s/iteration, CRF-GAN vs HA-GAN"),
    "render": ("pipelines.bench.render", "halo-tiled vs one-pass full-volume render: error, memory, time"),
    "preprocess": ("pipelines.bench.preprocess", "Ray Data preprocessing vs a single-process loop"),
    "train": ("pipelines.bench.train", "Ray Train scaling and overhead vs the single-process trainer"),
    "synthesize": ("pipelines.bench.synthesize", "synthesis volumes/min at 64³/128³ with 1 and 2 actors; render vs write"),
    "metrics": ("pipelines.bench.metrics", "degradation suite: does each quality metric see blur, noise, seams, collapse"),
    "feed": ("pipelines.bench.feed", "volumes/s from Parquet shards through Ray Data into a Ray Train worker (no model)"),
    "collapse": ("pipelines.bench.collapse", "does a training recipe leave mode collapse on phantoms within a budget"),
    "collapse-table": ("pipelines.bench.collapse_table",
                       "seed table of collapse runs: mean ± half-range; better/worse vs HA-GAN only outside the spread"),
    "viewer": ("pipelines.bench.viewer", "screenshot an evaluation report's slice viewer in headless Chromium"),
}


EPILOG = """examples:
  crfgan demo
  crfgan preprocess --input crfgan/data --output outputs/shards
  crfgan train --local --data outputs/shards --config tiny train.iterations=50
  crfgan config --config ct128 model.crf.iterations=5
  crfgan bench train-step --size 32 --batch 2 --iters 1
"""


def _available(table: dict) -> dict:
    """Entries whose module is present in this installation."""
    return {k: v for k, v in table.items() if importlib.util.find_spec(v[0]) is not None}


def _command(argv: list[str] | None) -> tuple[str | None, str | None]:
    """The stage (and bench) named on the command line, found without parsing options."""
    words = [a for a in (argv or []) if not a.startswith("-")]
    return (words[0] if words else None), (words[1] if len(words) > 1 else None)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The full parser; given ``argv``, only the stage it names is imported (``crfgan --help`` imports none), so
    help and argument errors come back without loading torch, Ray, pyarrow or MLflow."""
    p = argparse.ArgumentParser(
        prog="crfgan",
        description="Memory-efficient 3D medical image synthesis with CRF-guided GANs, as a pipeline on Ray.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
    )
    stage, bench_name = _command(argv) if argv is not None else (None, None)
    everything = argv is None
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_) in _available(STAGES).items():
        sp = sub.add_parser(name, help=help_, description=help_)
        if everything or name == stage:
            importlib.import_module(module).add_arguments(sp)
        sp.set_defaults(_run=lambda args, m=module: importlib.import_module(m).main(args))
    bench = sub.add_parser("bench", help="benchmarks (print a table; --json PATH writes the figures)")
    bsub = bench.add_subparsers(dest="bench", required=True, metavar="BENCH")
    for name, (module, help_) in _available(BENCHES).items():
        bp = bsub.add_parser(name, help=help_, description=help_)
        if everything or (stage == "bench" and name == bench_name):
            importlib.import_module(module).add_arguments(bp)
        if not any("--json" in a.option_strings for a in bp._actions):
            bp.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
        bp.set_defaults(_run=lambda args, m=module: importlib.import_module(m).run(args) or 0)
    return p


def main(argv: list[str] | None = None) -> int:
    from crfgan.config import ConfigError

    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except ConfigError as e:
        print(f"crfgan: config error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
