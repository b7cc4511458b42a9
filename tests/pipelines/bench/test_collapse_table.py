"""``crfgan bench collapse-table`` groups collapse-bench runs by variant and judges them against HA-GAN's."""

import json

import pytest

from pipelines.cli import main


def _run(path, name, arch, seed, it, cpu, g_div, g_q, div, q, rss=None, machine=None):
    overrides = ["train.ema_decay=0.999", f"train.seed={seed}"] + (["model.arch=hagan"] if arch == "hagan" else [])
    curve = [{"iteration": 0, "cpu_s": 10.0, "diversity_ratio": 3.0, "quality_vs_floor": 90.0,
              "g_diversity_ratio": 3.0, "g_quality_vs_floor": 90.0},
             {"iteration": 3000, "cpu_s": 900.0, "diversity_ratio": 0.5 + seed / 10, "quality_vs_floor": 3.5,
              "g_diversity_ratio": 0.6, "g_quality_vs_floor": 3.4},
             {"iteration": it, "cpu_s": cpu, "diversity_ratio": div, "quality_vs_floor": q,
              "g_diversity_ratio": g_div, "g_quality_vs_floor": g_q, **({"peak_rss_mb": rss} if rss else {})}]
    path.write_text(json.dumps({"name": name, "overrides": overrides, "floor": {"quality_score": 2.4},
                                "curve": curve, **({"machine": machine} if machine else {})}))
    return str(path)


@pytest.fixture
def runs(tmp_path):
    return [  # CRF-GAN: cheaper per iteration and further from real diversity, quality overlapping HA-GAN's
        _run(tmp_path / "c0.json", "crf-s0", "crfgan", 0, 6000, 1800.0, 0.72, 2.2, 0.66, 2.3, rss=600.0),
        _run(tmp_path / "c1.json", "crf-s1", "crfgan", 1, 6100, 1800.0, 0.78, 2.7, 0.72, 2.7, rss=640.0),
        _run(tmp_path / "h0.json", "ha-s0", "hagan", 0, 3800, 1800.0, 0.95, 2.1, 0.84, 2.5),
        _run(tmp_path / "h1.json", "ha-s1", "hagan", 1, 3900, 1800.0, 0.90, 2.5, 0.80, 2.9),
    ]


def test_runs_group_by_name_and_get_verdicts_against_the_hagan_variant(runs, tmp_path, capsys):
    out = tmp_path / "t.json"
    assert main(["bench", "collapse-table", *runs, "--json", str(out)]) == 0
    t = json.loads(out.read_text())
    assert t["baseline"] == "ha"  # the variant whose runs are model.arch=hagan
    crf = t["variants"]["crf"]
    assert crf["iterations"]["mean"] == pytest.approx(6050) and crf["iterations"]["half_range"] == pytest.approx(50)
    assert crf["cpu_s_per_iteration"]["vs_ha"] == "better"  # 0.295-0.30 vs 0.46-0.47 CPU s
    assert crf["g_diversity_ratio"]["vs_ha"] == "worse"  # |1 - x|: 0.22-0.28 vs 0.05-0.10
    assert crf["g_quality_vs_floor"]["vs_ha"] == "within spread"  # 2.2-2.7 vs 2.1-2.5
    assert crf["g_out_of_collapse"] == {"count": 2, "of": 2} and crf["out_of_collapse"] == {"count": 1, "of": 2}
    assert "vs_ha" not in t["variants"]["ha"]["iterations"]
    assert crf["peak_rss_mb"]["mean"] == pytest.approx(620)  # HA-GAN's runs did not record it: null, no verdict
    assert t["variants"]["ha"]["peak_rss_mb"]["mean"] is None and crf["peak_rss_mb"]["vs_ha"] == "—"
    text = capsys.readouterr().out
    assert "crf vs ha" in text and "1 of 2" in text
    from PIL import Image

    assert Image.open(out.with_suffix(".png")).format == "PNG"


def test_one_run_a_side_has_no_spread_to_be_outside_of(runs, capsys):
    assert main(["bench", "collapse-table", runs[0], runs[2]]) == 0
    text = capsys.readouterr().out
    assert "0.72 ± 0" in text and "within spread" not in text and "better" not in text and "worse" not in text


def test_files_that_are_not_collapse_runs_are_refused_by_name_before_any_table(runs, tmp_path, capsys):
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"name": "x", "curve": []}))
    out = tmp_path / "t.json"
    rc = main(["bench", "collapse-table", runs[0], str(empty), str(tmp_path / "missing.json"), "--json", str(out)])
    assert rc == 2 and not out.exists()
    err = capsys.readouterr().err
    assert f"{empty}: no evaluation curve" in err and f"{tmp_path / 'missing.json'}: no such file" in err
    assert main(["bench", "collapse-table", *runs, "--baseline", "nope"]) == 2
    assert "--baseline nope: no such variant" in capsys.readouterr().err


def test_at_iteration_takes_each_runs_last_evaluation_up_to_it(runs, tmp_path, capsys):
    out = tmp_path / "t.json"
    assert main(["bench", "collapse-table", *runs, "--at-iteration", "5000", "--json", str(out)]) == 0
    t = json.loads(out.read_text())
    assert t["at_iteration"] == {"crf": 5000, "ha": 5000}
    crf = t["variants"]["crf"]
    assert crf["iterations"]["values"] == [3000, 3000] and crf["diversity_ratio"]["values"] == [0.5, 0.6]
    assert crf["out_of_collapse"]["count"] == 0 and crf["g_diversity_ratio"]["vs_ha"] == "worse"
    assert t["variants"]["ha"]["iterations"]["values"] == [3800, 3900]  # stopped before 5000: their final rows
    assert "at or before iteration 5000" in capsys.readouterr().out


def test_at_iteration_can_name_a_variant_and_refuses_an_unknown_one(runs, tmp_path, capsys):
    out = tmp_path / "t.json"
    assert main(["bench", "collapse-table", *runs, "--at-iteration", "crf=3000", "--json", str(out)]) == 0
    t = json.loads(out.read_text())
    assert t["at_iteration"] == {"crf": 3000, "ha": None}
    assert t["variants"]["crf"]["iterations"]["values"] == [3000, 3000]
    assert t["variants"]["ha"]["iterations"]["values"] == [3800, 3900]
    capsys.readouterr()
    assert main(["bench", "collapse-table", *runs, "--at-iteration", "nope=3000"]) == 2
    assert "--at-iteration nope=…: no such variant" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "collapse-table", *runs, "--at-iteration", "crf=-3"])


def _machine(cpu):
    return {"device": "cpu", "cpu_model": cpu, "cpus": 2, "python": "3.11.9", "torch": "2.13.0+cpu"}


def test_runs_from_several_machines_are_named_under_the_table(tmp_path, capsys):
    a, b = _machine("CPU A"), _machine("CPU B")
    runs = [_run(tmp_path / "c0.json", "crf-s0", "crfgan", 0, 6000, 1800.0, 0.72, 2.2, 0.66, 2.3, machine=a),
            _run(tmp_path / "h0.json", "ha-s0", "hagan", 0, 3800, 1800.0, 0.95, 2.1, 0.84, 2.5, machine=a),
            _run(tmp_path / "h1.json", "ha-s1", "hagan", 1, 3900, 1800.0, 0.90, 2.5, 0.80, 2.9, machine=b),
            _run(tmp_path / "h2.json", "ha-s2", "hagan", 2, 3900, 1800.0, 0.90, 2.5, 0.80, 2.9)]
    out = tmp_path / "t.json"
    assert main(["bench", "collapse-table", *runs, "--json", str(out)]) == 0
    t = json.loads(out.read_text())
    assert t["machines"] == ["CPU A, 2 cores, torch 2.13.0+cpu", "CPU B, 2 cores, torch 2.13.0+cpu", "unrecorded"]
    assert t["variants"]["crf"]["machines"] == [0] and t["variants"]["ha"]["machines"] == [0, 1, 2]
    text = capsys.readouterr().out
    assert "runs from 3 machines" in text and "[1] CPU B, 2 cores, torch 2.13.0+cpu: ha ×1" in text
    assert "[0] CPU A, 2 cores, torch 2.13.0+cpu: crf ×1, ha ×1" in text


def test_runs_from_one_machine_get_no_machine_note(tmp_path, capsys):
    a = _machine("CPU A")
    runs = [_run(tmp_path / "c0.json", "crf-s0", "crfgan", 0, 6000, 1800.0, 0.72, 2.2, 0.66, 2.3, machine=a),
            _run(tmp_path / "h0.json", "ha-s0", "hagan", 0, 3800, 1800.0, 0.95, 2.1, 0.84, 2.5, machine=a)]
    assert main(["bench", "collapse-table", *runs]) == 0
    text = capsys.readouterr().out
    assert "machines" not in text and "did not record" not in text


def test_runs_that_recorded_no_machine_say_so(runs, capsys):
    assert main(["bench", "collapse-table", *runs]) == 0
    assert "did not record their machine" in capsys.readouterr().out
