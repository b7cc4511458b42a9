"""``ray job submit --working-dir . -- crfgan train …`` against a real Ray head started by the test (loopback only).

The head is its own cluster (``ray start --head --block`` in a child process with its own temp dir and ports), so it
never touches the session's ``ray_local``; it is stopped by signalling that child, never by ``ray stop`` (which would
kill every Ray on the machine). Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.pipelines.mlflow_fixtures import free_port, tiny_shards, wait_for_http  # noqa: F401

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
EXCLUDES = [".venv", ".git", "outputs", "bench-results", "**/__pycache__", "*.egg-info", ".pytest_cache"]


def _start_head(env: dict) -> tuple[subprocess.Popen, str]:
    """One ``ray start --head --block`` on fresh ports and a fresh temp dir; returns (process, job server URL) once
    the server answers (401 without the token also means it is up)."""
    gcs, dash = free_port(), free_port()
    temp = Path(tempfile.mkdtemp(prefix="rj", dir="/tmp"))  # short: Ray's unix socket paths have a length limit
    # Every fixed default port gets a free one: the session's own Ray already holds the defaults (agent 52365 …).
    ports = {f"--{k}-port": free_port() for k in ("dashboard-agent-listen", "dashboard-agent-grpc", "metrics-export",
                                                  "runtime-env-agent", "ray-client-server")}
    cmd = [str(BIN / "ray"), "start", "--head", "--block", f"--port={gcs}", "--node-ip-address=127.0.0.1",
           "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--num-cpus=2", "--num-gpus=0",
           f"--temp-dir={temp}", "--disable-usage-stats", *(f"{k}={v}" for k, v in ports.items())]
    with open(temp / "head.log", "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{dash}"
    try:
        wait_for_http(f"{url}/api/version", proc, temp / "head.log", "ray head", 120, up=(200, 401))
    except RuntimeError:
        _stop_head(proc)
        raise
    return proc, url


def _stop_head(proc: subprocess.Popen) -> None:
    """Signal the ``ray start --block`` process group: it stops the processes it started (never ``ray stop``)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def ray_head():
    """``(job server URL, env)`` of a fresh single-node Ray head with 2 CPUs; ``env`` carries its auth token."""
    # Token auth as a cluster runs it (Ray's default since 2.59), with a token of its own: ~/.ray is not touched.
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    env.pop("RAY_ADDRESS", None)
    try:
        proc, url = _start_head(env)
    except RuntimeError:  # one more try on new ports: a port picked as free can be taken before Ray binds it
        proc, url = _start_head(env)
    try:
        yield url, env
    finally:
        _stop_head(proc)


def test_crfgan_train_runs_as_a_ray_job(ray_head, tiny_shards, tmp_path):  # noqa: F811
    url, env = ray_head
    storage = tmp_path / "runs"
    entry = ["crfgan", "train", "--data", tiny_shards, "--config", "tiny", "--storage", str(storage),
             "--run-name", "job", "--no-mlflow", "train.num_workers=2", "train.iterations=4", "train.log_every=2",
             "train.checkpoint_every=4", "train.val_every=4"]
    submit = [str(BIN / "ray"), "job", "submit", "--address", url, "--working-dir", str(REPO),
              "--runtime-env-json", json.dumps({"excludes": EXCLUDES}), "--", *entry]
    for _ in range(12):  # the head's job agent registers a few seconds after the server answers: bounded retries
        res = subprocess.run(submit, capture_output=True, text=True, env=env, timeout=600, cwd=REPO, check=False)
        out = res.stdout + res.stderr
        if "No available agent to submit job" not in out:
            break
        time.sleep(5)
    assert res.returncode == 0, out[-4000:]
    assert "succeeded" in out.lower() and "[train] done: iteration 4" in out, out[-4000:]
    assert env["RAY_AUTH_TOKEN"] not in out  # the cluster's token is a credential: never in a log
    assert any(storage.glob("job/checkpoint_*")), sorted(p.name for p in storage.rglob("*"))[:20]

    # and the job server agrees (asked through the CLI, in the cluster's auth environment)
    job_id = re.search(r"Job '(raysubmit_\w+)' submitted successfully", out).group(1)
    status = subprocess.run([str(BIN / "ray"), "job", "status", "--address", url, job_id], capture_output=True,
                            text=True, env=env, timeout=60, check=False)
    plain = re.sub(r"\x1b\[[0-9;]*m", "", status.stdout + status.stderr)  # the CLI colours its output
    assert status.returncode == 0 and job_id in plain and "succeeded" in plain.lower(), plain
