"""``crfgan config``: print the resolved config tree (preset + overrides) as YAML, and its hash."""

from __future__ import annotations

import yaml

from .args import add_config_arguments, config_from_args


def add_arguments(p) -> None:
    add_config_arguments(p)


def main(args) -> int:
    cfg = config_from_args(args)
    print(f"# config {cfg.name}, hash {cfg.hash()}")
    print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
    return 0
