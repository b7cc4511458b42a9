"""Every shipped search space names real config keys, and every choice builds a valid tiny config."""

from pathlib import Path

import pytest
import yaml

from crfgan.config import load_config, valid_keys

SPACES = sorted((Path(__file__).resolve().parents[1] / "tune_spaces").glob("*.yaml"))


def test_there_is_a_search_space():
    assert SPACES


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.name)
def test_space_keys_and_values_are_valid(path):
    doc = yaml.safe_load(path.read_text())
    assert doc["mode"] in ("min", "max") and doc["metric"]
    for key, dist in doc["space"].items():
        assert key in valid_keys(), f"{path.name}: {key} is not a config key"
        (kind, values), = dist.items()
        assert kind in ("choice", "uniform", "loguniform", "randint"), f"{path.name}: {key}: {kind}"
        probes = values if kind == "choice" else values[:2]
        for v in probes:
            load_config("tiny", [f"{key}={v}"])  # raises ConfigError naming the key if invalid
