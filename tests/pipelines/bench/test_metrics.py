"""``crfgan bench metrics`` at a tiny size: every degradation row and metric is in the table with a floor and a z."""

import json

from crfgan.metrics.degrade import SUITE


def test_degradation_suite_tiny(tmp_path, capsys):
    from pipelines.cli import main

    out = tmp_path / "metrics.json"
    assert main(["bench", "metrics", "--sizes", "32", "--volumes", "4", "--seeds", "2", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    t = doc["tables"]["32"]
    assert set(t["rows"]) == set(SUITE)
    assert t["floor"]["quality_score"]["floor_sd"] >= 0
    pure = t["rows"]["pure noise"]["quality_score"]
    assert pure["detected"] and pure["z"] > 3  # noise in [-1, 1] is no CT at any set size
    assert t["rows"]["memorised copies"]["memorisation_ratio"]["mean"] < 1e-3  # the training volumes themselves
    assert "Degradation suite" in capsys.readouterr().out


def test_too_few_volumes_is_refused_before_work():
    import pytest

    from pipelines.cli import main

    with pytest.raises(SystemExit, match="--volumes must be >= 4"):
        main(["bench", "metrics", "--volumes", "2"])


def test_score_cost_compares_a_score_with_the_training_it_interrupts(tmp_path):
    from pipelines.cli import main

    out = tmp_path / "cost.json"
    assert main(["bench", "metrics", "--cost", "--sizes", "32", "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert row["preset"] == "tiny" and row["s_per_iteration"] > 0 and row["score_s"] > 0
    window = row["val_every"] * row["s_per_iteration"]
    assert abs(row["cost_pct"] - 100 * row["score_s"] / (window + row["score_s"])) < 0.05
