"""Arguments every stage shares: ``--config NAME_OR_PATH`` and trailing ``key=value`` overrides."""

from __future__ import annotations

import argparse


def add_config_arguments(p: argparse.ArgumentParser, default: str = "tiny") -> None:
    p.add_argument(
        "--config",
        default=default,
        metavar="NAME_OR_PATH",
        help="preset (tiny, ct64, ct128, ct256, ct512, mri256) or a YAML file (default: "
             + (default if default else "the real shard dataset's own config, else ct64") + ")",
    )
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="dotted config overrides, e.g. model.crf.iterations=5 train.batch_size=2",
    )


def config_from_args(args):
    from crfgan.config import load_config

    return load_config(args.config, args.overrides)


def check_output_folder(path: str, flag: str) -> None:
    """A local output location must be (or be creatable as) a writable folder: a ``ValueError`` naming the flag and
    the offending path, raised before any work (before Ray starts). URIs (``s3://…``) are checked by their stage."""
    import os
    from pathlib import Path

    if "://" in str(path):
        return
    p = Path(path).expanduser()
    probe = p
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise ValueError(f"{flag} {path}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path}: {probe} is not writable by this user")
