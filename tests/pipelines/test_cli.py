"""``crfgan --help``, each stage's and each bench's ``--help`` start without importing torch, Ray, pyarrow or MLflow
(checked in ``sys.modules`` of a fresh interpreter, not by the clock)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.cli import BENCHES, STAGES

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "ray", "pyarrow", "mlflow")
PROBE = f"""
import json, sys
from pipelines import cli
try:
    rc = cli.main(sys.argv[1:])
except SystemExit as e:
    rc = e.code
print(json.dumps({{"rc": rc, "heavy": [m for m in {HEAVY!r} if m in sys.modules]}}))
"""


def probe(*argv: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, env=env, timeout=120)
    return json.loads(r.stdout.strip().splitlines()[-1])


COMMANDS = [[], *[[s] for s in STAGES], ["bench"], *[["bench", b] for b in BENCHES]]


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c) or "crfgan")
def test_help_imports_no_heavy_module(cmd):
    got = probe(*cmd, "--help")
    assert got == {"rc": 0, "heavy": []}


def test_probe_sees_heavy_imports():
    # the check can fail: a command that really runs imports them
    got = probe("config", "--config", "tiny")
    assert got["rc"] == 0
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-c", "import crfgan.volume, sys; print('torch' in sys.modules)"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.stdout.strip() == "True"


def test_a_bad_argument_is_reported_without_heavy_imports():
    got = probe("train", "--no-such-option")
    assert got == {"rc": 2, "heavy": []}
