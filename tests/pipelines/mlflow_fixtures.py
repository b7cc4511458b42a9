"""A real ``mlflow server`` on loopback (sqlite backend, artifacts in tmp) and real-scan tiny shards.

Import into a test module: ``from tests.pipelines.mlflow_fixtures import mlflow_server, tiny_shards  # noqa: F401``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
SCANS = [DATA / "ct/example_ct.nii.gz", DATA / "mri/FLAIR.nii.gz", DATA / "mri/MNI152_2009_template.nii.gz"]


def val_fraction_for_one_val_volume() -> float:
    """The val fraction that puts exactly one of SCANS into val (split by content hash): one train volume per worker."""
    from crfgan.io import load_scan
    from crfgan.shards import split_score, volume_id

    scores = sorted(split_score(volume_id(s.array, s.spacing)) for s in map(load_scan, SCANS))
    return round((scores[0] + scores[1]) / 2, 6)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_http(url: str, proc: subprocess.Popen, log: Path, what: str, timeout: float, up=(200,)) -> None:
    """Poll ``url`` until it answers with a status in ``up`` (bounded by ``timeout``); fail fast, with the tail of
    ``log``, when the server process ``proc`` exits first."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}: {log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status in up:
                    return
        except urllib.error.HTTPError as e:
            if e.code in up:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not up after {timeout:.0f} s: {log.read_text()[-3000:]}")
        time.sleep(0.5)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """``http://127.0.0.1:PORT`` of a real MLflow tracking server, terminated at teardown."""
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    cmd = [str(mlflow_bin), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "artifacts")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    log = open(root / "server.log", "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/health", proc, root / "server.log", "mlflow server", 90)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


@pytest.fixture(scope="session")
def tiny_shards(ray_local, tmp_path_factory):
    """The three real scans preprocessed (tiny, 32³) by the preprocess pipeline: 2 train volumes, 1 val."""
    from crfgan.config import load_config
    from pipelines.preprocess import run

    missing = [str(p) for p in SCANS if not p.exists()]
    assert not missing, f"real scans missing: {missing}"
    out = tmp_path_factory.mktemp("shards")
    cfg = load_config("tiny", [f"data.val_fraction={val_fraction_for_one_val_volume()}"])
    manifest = run([str(p) for p in SCANS], str(out), cfg)
    split = manifest["counts"]["split"]
    assert split.get("train", 0) >= 2 and split.get("val", 0) >= 1, f"expected ≥2 train and ≥1 val volumes, got {split}"
    return str(out)
