"""Search-space files: every shipped one is valid for the preset it is meant for, and a bad file is refused with
the file, the key and the fix named — before Ray or any trial starts (no Ray here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from crfgan.config import ConfigError, load_config
from pipelines.tune_space import load_space, param_space

SPACES = Path(__file__).resolve().parents[2] / "tune_spaces"
PRESET_FOR = {"quick.yaml": "tiny", "default.yaml": "ct128"}  # the config each shipped space is written for


def test_every_shipped_space_has_a_preset():
    assert sorted(p.name for p in SPACES.glob("*.yaml")) == sorted(PRESET_FOR)


@pytest.mark.parametrize("name", sorted(PRESET_FOR))
def test_shipped_space_is_valid(name):
    space, cfg = load_space(SPACES / name, load_config(PRESET_FOR[name]))
    assert space.metric == "quality_score" and space.mode == "min"
    assert {"model.crf.iterations", "model.crf.nodes", "model.embedding_channels"} <= set(space.dists)
    assert cfg.train.val_every <= cfg.train.iterations and cfg.tune.num_samples >= 4


def test_default_space_searches_the_crf_and_schedule():
    space, cfg = load_space(SPACES / "default.yaml", load_config("ct128"))
    want = {"model.crf.iterations", "model.crf.nodes", "model.crf.num_nodes", "model.embedding_channels",
            "model.embedding_size", "train.lr_g", "train.lr_d", "train.lr_crf", "train.crf_weight_start",
            "train.crf_weight_decay_iters", "train.share_fakes"}
    assert want <= set(space.dists)
    assert set(space.dists["model.embedding_size"][1]) == {cfg.model.image_size // 4, cfg.model.image_size // 8}
    assert cfg.train.use_gpu


def _write(tmp_path, body: str) -> Path:
    p = tmp_path / "space.yaml"
    p.write_text(body)
    return p


@pytest.mark.parametrize("body, expect", [
    ("metric: val_l1\nmode: min\nspace:\n  model.crf.iteratons: {choice: [1, 2]}\n",
     ["space.yaml", "model.crf.iteratons", "model.crf.iterations"]),  # the closest valid key is named
    ("metric: val_l1\nmode: min\nspace:\n  train.lr_g: {gaussian: [0, 1]}\n", ["train.lr_g", "gaussian", "choice"]),
    ("metric: val_l1\nmode: min\nspace:\n  train.lr_g: {loguniform: [0, 1.0e-3]}\n", ["low > 0"]),
    ("metric: val_l1\nmode: min\nspace:\n  train.lr_g: {uniform: [1.0e-3, 1.0e-4]}\n", ["low < high"]),
    ("metric: val_l1\nmode: min\nspace:\n  train.lr_g: {choice: []}\n", ["non-empty"]),
    ("metric: val_l1\nmode: min\nspace:\n  model.crf.iterations: {uniform: [1, 10]}\n", ["model.crf.iterations",
                                                                                      "expects int"]),
    ("metric: val_l1\nmode: min\nspace:\n  model.crf.nodes: {choice: [slabs, layers]}\n", ["model.crf.nodes"]),
    ("metric: val_l1\nmode: sideways\nspace:\n  train.lr_g: {choice: [1.0e-4]}\n", ["mode"]),
    ("metric: val_l1\nmode: min\nsearch_space:\n  train.lr_g: {choice: [1.0e-4]}\n", ["search_space", "allowed"]),
    ("metric: val_l1\nmode: min\nfixed:\n  train.iteration: 5\nspace:\n  train.lr_g: {choice: [1.0e-4]}\n",
     ["train.iteration", "train.iterations"]),
    # each value alone is valid, a combination is not: 16 channel nodes do not divide 8 embedding channels
    ("metric: val_l1\nmode: min\nfixed:\n  model.crf.nodes: channels\nspace:\n"
     "  model.crf.num_nodes: {choice: [4, 16]}\n  model.embedding_channels: {choice: [16, 8]}\n", ["combination"]),
])
def test_bad_space_is_refused_naming_file_and_key(tmp_path, body, expect):
    with pytest.raises(ConfigError) as e:
        load_space(_write(tmp_path, body), load_config("tiny"))
    for s in expect:
        assert s in str(e.value), str(e.value)


def test_overrides_win_over_fixed_and_grid_turns_choices_into_axes(tmp_path):
    p = _write(tmp_path, "metric: val_l1\nmode: min\nfixed:\n  train.iterations: 8\n"
                         "space:\n  model.crf.iterations: {choice: [1, 3]}\n  train.lr_crf: {loguniform: [1.0e-4, 1.0e-3]}\n")
    space, cfg = load_space(p, load_config("tiny"), {"train.iterations": 6})
    assert cfg.train.iterations == 6
    grid = param_space(space, "grid")
    assert grid["model.crf.iterations"] == {"grid_search": [1, 3]}
    assert type(grid["train.lr_crf"]).__name__ == "Float"
