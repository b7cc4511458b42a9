"""``crfgan bench collapse`` runs tiny end to end, and its scorer tells real sets from collapsed ones."""

import json

import numpy as np
import pytest

from crfgan.config import load_config
from pipelines.bench.collapse import Scorer, phantom_set
from pipelines.cli import main


@pytest.fixture(scope="module")
def sets():
    cfg = load_config("tiny")
    return cfg, phantom_set(4, 1, cfg), phantom_set(4, 2, cfg)


def test_a_real_set_scores_its_floor_and_copies_of_one_volume_score_collapse(sets):
    cfg, held, second = sets
    s = Scorer(held, second, cfg)
    real = s.score(second)
    assert real["quality_vs_floor"] == pytest.approx(1.0)
    assert real["diversity_ratio"] == pytest.approx(s.real_second_diversity) and real["diversity_ratio"] > 0.5
    copies = s.score(np.repeat(second[:1], 4, axis=0))
    assert copies["diversity_ratio"] < 0.05 and copies["collapse_term"] > 5
    assert copies["quality_score"] > real["quality_score"] + 5
    assert copies["lung_fraction_sd"] == 0.0 and real["lung_fraction_sd"] > 0


def test_a_tiny_run_writes_its_curve_and_verdict(tmp_path, capsys):
    out = tmp_path / "c.json"
    rc = main(["bench", "collapse", "--config", "tiny", "--no-tiny", "--train", "3", "--held-out", "3",
               "--samples", "3", "--iterations", "4", "--eval-every", "2", "--json", str(out),
               "train.ema_decay=0.9", "train.r1_gamma=1", "train.instance_noise=0.1"])
    assert rc == 0
    doc = json.loads(out.read_text())
    assert doc["done"] and doc["iterations"] == 4 and doc["n_train"] == 3
    assert [r["iteration"] for r in doc["curve"]] == [0, 2, 4]
    last = doc["curve"][-1]
    assert {"diversity_ratio", "quality_vs_floor", "lung_fraction_sd", "g_diversity_ratio", "d_loss", "r1",
            "noise_sigma", "cpu_s", "peak_rss_mb"} <= set(last)
    assert 50 < last["peak_rss_mb"] < 64 * 1024 and last["peak_rss_mb"] >= doc["curve"][0]["peak_rss_mb"]
    assert doc["floor"]["quality_score"] > 0 and isinstance(doc["out_of_collapse"], bool)
    assert "train.ema_decay=0.9" in doc["overrides"]
    import torch

    assert doc["machine"]["torch"] == torch.__version__ and doc["machine"]["cpu_model"]  # runs compare across CPUs
    assert doc["data"] == "phantom://3?size=32&seed=0"  # tiny keeps the phantoms' own 1 mm: no spacing in the URI
    assert "q/floor" in capsys.readouterr().out
    from PIL import Image

    png = Image.open(out.with_suffix(".png"))  # the curves: three panels side by side
    assert png.format == "PNG" and png.width > 2 * png.height


def test_a_cpu_budget_stops_training_after_the_iteration_that_spends_it(tmp_path):
    out = tmp_path / "c.json"  # setup alone spends more than 1 ms of CPU: the first iteration is the last
    rc = main(["bench", "collapse", "--config", "tiny", "--no-tiny", "--train", "3", "--held-out", "3",
               "--samples", "3", "--iterations", "4", "--eval-every", "2", "--budget-cpu-s", "0.001",
               "--json", str(out)])
    assert rc == 0
    doc = json.loads(out.read_text())
    assert doc["budget_cpu_s"] == 0.001 and doc["iterations"] == 1
    assert [r["iteration"] for r in doc["curve"]] == [0, 1] and doc["cpu_s"] > 0.001


@pytest.mark.parametrize("flag,value", [("--budget-cpu-s", "-1"), ("--budget-s", "nan"), ("--budget-cpu-s", "ten")])
def test_a_negative_or_unreadable_budget_is_refused_before_any_work(flag, value, tmp_path, capsys):
    out = tmp_path / "c.json"
    with pytest.raises(SystemExit) as e:
        main(["bench", "collapse", "--config", "tiny", flag, value, "--json", str(out)])
    assert e.value.code == 2 and not out.exists()
    assert f"{flag}: must be a number of seconds >= 0, got {value!r}" in capsys.readouterr().err
