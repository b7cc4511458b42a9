"""``infra/gpu_check.py`` end to end on the CPU (``--device cpu --tiny``), in a Python where MLflow, SimpleITK, moto,
boto3 and isal cannot be imported (as on the GPU test machine): every part passes, the Ray Train part kills its
worker and ends at exactly the asked iterations, and results.md/results.json hold every part."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BLOCKER = '''import importlib.abc, sys
BLOCK = {"mlflow", "SimpleITK", "moto", "boto3", "isal"}
class _Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCK:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
        return None
sys.meta_path.insert(0, _Blocked())
'''


@pytest.fixture(scope="module")
def check(tmp_path_factory):
    pytest.importorskip("ray")
    tmp = tmp_path_factory.mktemp("gpu-check")
    (tmp / "block").mkdir()
    (tmp / "block" / "sitecustomize.py").write_text(BLOCKER)
    out = tmp / "out"
    env = {**os.environ, "PYTHONPATH": str(tmp / "block")}  # the script adds the repository root itself
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, str(REPO / "infra" / "gpu_check.py"), "--out", str(out), "--device", "cpu",
                           "--tiny", "--budget-s", "1500"], env=env, cwd=str(tmp), capture_output=True, text=True,
                          timeout=1800)
    return proc, out


def test_every_part_passes_without_mlflow(check):
    proc, out = check
    res = json.loads((out / "results.json").read_text())
    logs = {p: (out / f"{p}.log").read_text()[-3000:] for p in ("train-step", "ray-train", "synthesize")
            if (out / f"{p}.log").exists()}
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:], logs)
    assert res["machine"]["mlflow"] is None  # the blocker really hid MLflow from the script
    assert [p["status"] for p in res["parts"].values()] == ["ok", "ok", "ok", "note"]
    for name in ("train-step", "ray-train", "synthesize"):  # each part's own child wrote its figures
        assert res["parts"][name]["data"], name


def test_train_step_rows_and_ratios(check):
    _, out = check
    d = json.loads((out / "results.json").read_text())["parts"]["train-step"]["data"]
    got = sorted((r["arch"], r["options"], r["size"]) for r in d["rows"])
    assert got == sorted([(a, o, 32) for a in ("crfgan", "hagan") for o in ("fp32", "bf16+ckpt")]
                         + [("crfgan", "fp32-unfused", 32)])
    assert all(r["its_per_s"] > 0 and r["peak_mb"] > 0 for r in d["rows"])
    assert any("like for like" in r["compares"] for r in d["ratios"])
    assert any("fp32 vs fp32-unfused (same function" in r["compares"] for r in d["ratios"])


def test_ray_train_killed_and_resumed_exactly(check):
    _, out = check
    d = json.loads((out / "results.json").read_text())["parts"]["ray-train"]["data"]
    assert all(d["checks"].values()), d["checks"]
    assert d["stage1"]["killed_pid"] and d["stage2"]["iteration"] == 12
    lineage = d["stage2"]["lineage"]
    assert lineage[0][0] == 0 and lineage[-1][1] == 12 and sum(b - a for a, b in lineage) == 12


def test_synthesize_and_render_rows(check):
    _, out = check
    d = json.loads((out / "results.json").read_text())["parts"]["synthesize"]["data"]
    assert [j["written"] for j in d["jobs"]] == [2, 2] and {j["tiled"] for j in d["jobs"]} == {True, False}
    assert sorted(r["mode"] for r in d["render"]) == ["one-pass", "tiled-global"]
    synth = sorted((out / "work" / "synthetic-tiled-true").glob("synthetic_*.nii.gz"))
    assert len(synth) == 2


def test_results_md_is_one_table_of_every_part(check):
    _, out = check
    md = (out / "results.md").read_text().splitlines()
    table = [line for line in md if line.startswith("|")]
    assert table[0] == "| part | item | result | detail |" and len(table) > 10
    assert len([line for line in md if line.startswith("| part |")]) == 1
    for part in ("train-step", "ray-train", "synthesize", "budget"):
        assert any(line.startswith(f"| {part} |") for line in table), part


def test_a_part_over_its_timeout_is_killed_and_earlier_parts_stay(tmp_path):
    """The ray-train child is killed at its 3 s timeout (while it starts); the table keeps an earlier part's figures."""
    import argparse
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "infra" / "gpu_check.py")
    gc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gc)
    args = argparse.Namespace(device="cpu", tiny=True, out=str(tmp_path))
    late = gc.run_part("ray-train", args, tmp_path, timeout=3)
    assert late["status"] == "timeout" and late["rc"] is None and late["seconds"] < 30
    earlier = {"status": "ok", "seconds": 1, "timeout_s": 9, "data": {"rows": [
        {"arch": "crfgan", "options": "fp32", "size": 32, "batch": 2, "its_per_s": 1.5, "peak_mb": 10.0,
         "device": "cpu"}], "ratios": []}}
    results = {"started": "now", "budget_s": 10, "tiny": True, "machine": gc.machine("cpu"),
               "parts": {"train-step": earlier, "ray-train": late}}
    gc.write_results(tmp_path, results)
    md = (tmp_path / "results.md").read_text()
    assert "| train-step | crfgan fp32 32³ b2 | 1.5 it/s |" in md and "| ray-train | status | timeout |" in md
    assert json.loads((tmp_path / "results.json").read_text())["parts"]["ray-train"]["status"] == "timeout"
