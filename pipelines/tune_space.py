"""Search-space files for ``crfgan tune`` (``tune_spaces/*.yaml``): parsing and checks before any trial starts.

Format (dotted config keys, as on the command line)::

    metric: quality_score         # any metric the trainer reports (default: tune.metric)
    mode: min                     # min | max (default: tune.mode)
    fixed:                        # optional: config values every trial shares (command-line overrides win)
      train.iterations: 2000
    space:                        # one distribution per key
      model.crf.iterations: {choice: [1, 5, 10]}
      train.lr_crf: {loguniform: [1.0e-4, 1.0e-3]}   # also uniform: [lo, hi], randint: [lo, hi) (integers)

Checked up front: every key exists in the config tree (else: the file, the key and the closest valid key), every
distribution is well formed, every choice value and range end builds a valid config, and (for the choices) every
combination does, up to ``MAX_COMBINATIONS``. No Ray here; ``param_space`` turns a space into Ray Tune objects.
"""

from __future__ import annotations

import copy
import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from crfgan.config import Config, ConfigError, set_key

KINDS = ("choice", "uniform", "loguniform", "randint")
TOP_KEYS = ("metric", "mode", "fixed", "space")
MAX_COMBINATIONS = 4096  # choice combinations checked one by one (more: each value is still checked alone)


@dataclass
class Space:
    path: str
    metric: str
    mode: str
    fixed: dict = field(default_factory=dict)  # {dotted key: value}
    dists: dict = field(default_factory=dict)  # {dotted key: (kind, values)}

    def grid_size(self) -> int:
        return math.prod(len(v) for k, v in self.dists.values() if k == "choice")


def _err(path, msg: str) -> ConfigError:
    return ConfigError(f"{path}: {msg}")


def read_space(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"search space file {p} does not exist")
    try:
        doc = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise _err(p, f"not valid YAML: {e}") from None
    if not isinstance(doc, dict):
        raise _err(p, "must be a mapping with metric, mode and space")
    return doc


def apply(cfg: Config, values: dict, path=None) -> Config:
    """A validated copy of ``cfg`` with dotted ``values`` set; errors name ``path`` and the key."""
    out = copy.deepcopy(cfg)
    try:
        for k, v in values.items():
            set_key(out, str(k), v)
        return out.validate()
    except ConfigError as e:
        raise (_err(path, str(e)) if path else e) from None


def _check_dist(path, key: str, dist) -> tuple[str, list]:
    if not isinstance(dist, dict) or len(dist) != 1:
        raise _err(path, f"{key}: expected one distribution such as {{choice: [...]}}, got {dist!r}")
    (kind, values), = dist.items()
    if kind not in KINDS:
        raise _err(path, f"{key}: unknown distribution {kind!r}; use one of {', '.join(KINDS)}")
    if not isinstance(values, list) or not values:
        raise _err(path, f"{key}: {kind} needs a non-empty list, got {values!r}")
    if kind == "choice":
        return kind, values
    if len(values) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise _err(path, f"{key}: {kind} needs [low, high] numbers, got {values!r}")
    lo, hi = values
    if not lo < hi:
        raise _err(path, f"{key}: {kind} needs low < high, got {values!r}")
    if kind == "loguniform" and lo <= 0:
        raise _err(path, f"{key}: loguniform needs low > 0, got {values!r}")
    if kind == "randint" and not (float(lo).is_integer() and float(hi).is_integer()):
        raise _err(path, f"{key}: randint needs integer bounds, got {values!r}")
    return kind, values


def _probes(kind: str, values: list) -> list:
    """Values a distribution can produce that must each build a valid config (ends and an inner point)."""
    if kind == "choice":
        return list(values)
    lo, hi = values
    if kind == "randint":  # [lo, hi)
        return [int(lo), int(hi) - 1]
    mid = math.sqrt(lo * hi) if kind == "loguniform" else (lo + hi) / 2
    return [lo, mid, hi]


def load_space(path: str | Path, base: Config, overrides: dict | None = None) -> tuple[Space, Config]:
    """Parse and check a space file against ``base``; returns the space and the base with ``fixed`` and then
    ``overrides`` ({dotted key: value}, the command line's) applied."""
    doc = read_space(path)
    unknown = [k for k in doc if k not in TOP_KEYS]
    if unknown:
        raise _err(path, f"unknown top-level key {unknown[0]!r}; allowed: {', '.join(TOP_KEYS)}")
    fixed = doc.get("fixed") or {}
    dists = doc.get("space")
    if not isinstance(fixed, dict):
        raise _err(path, "fixed must be a mapping of dotted config keys to values")
    if not isinstance(dists, dict) or not dists:
        raise _err(path, "space must be a non-empty mapping of dotted config keys to distributions")
    cfg = apply(apply(base, fixed, path), overrides or {})
    metric = doc.get("metric", cfg.tune.metric)
    mode = doc.get("mode", cfg.tune.mode)
    if not isinstance(metric, str) or not metric:
        raise _err(path, f"metric must be a metric name, got {metric!r}")
    if mode not in ("min", "max"):
        raise _err(path, f"mode must be min or max, got {mode!r}")
    space = Space(str(path), metric, mode, dict(fixed), {})
    for key, dist in dists.items():
        key = str(key)
        kind, values = _check_dist(path, key, dist)
        for v in _probes(kind, values):
            apply(cfg, {key: v}, path)  # unknown key (closest valid key named), wrong type, invalid value
        space.dists[key] = (kind, values)
    choices = {k: v for k, (kind, v) in space.dists.items() if kind == "choice"}
    if len(choices) > 1 and space.grid_size() <= MAX_COMBINATIONS:
        lows = {k: _probes(kind, v)[0] for k, (kind, v) in space.dists.items() if kind != "choice"}
        for combo in itertools.product(*choices.values()):
            values = dict(zip(choices, combo))
            try:
                apply(cfg, {**lows, **values})
            except ConfigError as e:
                raise _err(path, f"the combination {values} is invalid: {e}") from None
    return space, cfg


def param_space(space: Space, search: str) -> dict:
    """Ray Tune's ``param_space``: flat {dotted key: domain}; with ``search='grid'`` every choice is a grid axis."""
    from ray import tune

    out = {}
    for key, (kind, values) in space.dists.items():
        if kind == "choice":
            out[key] = tune.grid_search(values) if search == "grid" else tune.choice(values)
        elif kind == "uniform":
            out[key] = tune.uniform(*values)
        elif kind == "loguniform":
            out[key] = tune.loguniform(*values)
        else:
            out[key] = tune.randint(int(values[0]), int(values[1]))
    return out
