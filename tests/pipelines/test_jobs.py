"""End to end on the local stack (``infra/local/stack.py``, what ``make up`` runs): a Ray head with token auth and no
CPUs plus one Ray worker node, a real ``mlflow server`` (sqlite, artifacts on S3) and a moto S3 server, all on
loopback. The preprocess → train chain runs as ``ray job submit --working-dir`` jobs; the job drivers run on the
head and every task and training worker on the other node, so this is also the multi-node test (rank 0 is on a
node that is not the driver's). Outputs are checked on the S3 endpoint and in the MLflow server; a submission
without the token is refused; ``down`` leaves no process of the stack alive. Every wait is bounded. (It replaces the
former single-head ``crfgan train`` job test: same head set-up through the real scripts, more checked.)
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.pipelines.mlflow_fixtures import SCANS, val_fraction_for_one_val_volume

REPO = Path(__file__).resolve().parents[2]
STACK = [sys.executable, str(REPO / "infra" / "local" / "stack.py")]


def _port() -> int:
    """A free port chosen the way the stack chooses its own (``infra/local/stack.py``: bounded tries, 20000-32000)."""
    spec = importlib.util.spec_from_file_location("crfgan_local_stack", REPO / "infra" / "local" / "stack.py")
    stack_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stack_module)
    return stack_module._free_port()


def _group_members(pgids: set[int]) -> list[int]:
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            f = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if f[0] != "Z" and int(f[2]) in pgids:
            pids.append(int(stat.parent.name))
    return pids


@pytest.fixture(scope="module")
def stack(tmp_path_factory, fake_aws_env):
    """(env for clients, state) of a running local stack; stopped with ``stack.py down`` at the end."""
    d = tmp_path_factory.mktemp("stack")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_"))}
    env.update(CRFGAN_STACK_DIR=str(d), CRFGAN_S3_PORT=str(_port()), CRFGAN_MLFLOW_PORT=str(_port()),
               CRFGAN_RAY_PORT=str(_port()), CRFGAN_RAY_DASHBOARD_PORT=str(_port()), CRFGAN_WORKER_CPUS="2",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    up = subprocess.run([*STACK, "up"], capture_output=True, text=True, env=env, timeout=420, check=False)
    state_file = d / "state.json"
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        for line in up.stdout.splitlines():  # the printed `export K=V …` lines, as a shell would apply them
            if line.strip().startswith("export ") and "${" not in line:
                for kv in shlex.split(line.strip()[len("export "):].split("#")[0]):
                    k, v = kv.split("=", 1)
                    env[k] = v
        yield env, json.loads(state_file.read_text())
    finally:
        state = json.loads(state_file.read_text()) if state_file.exists() else {"services": []}
        down = subprocess.run([*STACK, "down"], capture_output=True, text=True, env=env, timeout=120, check=False)
        left = _group_members({s["pid"] for s in state["services"]})
        assert down.returncode == 0 and not left, f"down left {left}: {down.stdout}{down.stderr}"


def test_preprocess_train_synthesize_evaluate_chain_as_jobs_on_two_nodes(stack, tmp_path, monkeypatch):
    import boto3
    from mlflow.tracking import MlflowClient

    from pipelines import jobs

    env, state = stack
    assert {s["name"] for s in state["services"]} == {"s3", "mlflow", "ray-head", "ray-worker"}
    address, s3_url, mlflow_url = env["RAY_API_SERVER_ADDRESS"], env["AWS_ENDPOINT_URL"], env["MLFLOW_TRACKING_URI"]
    assert all("127.0.0.1" in u for u in (address, s3_url, mlflow_url))
    token = Path(env["RAY_AUTH_TOKEN_PATH"]).read_text().strip()

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_url)
    scans = jobs.upload_scans([str(p) for p in SCANS], "s3://crfgan/e2e/scans/")
    assert len(scans) == 3

    # the cluster refuses a submission without its token (a fresh HOME: no ~/.ray/auth_token to fall back on)
    home = tmp_path / "home"
    home.mkdir()
    anon = {k: v for k, v in env.items() if not k.startswith("RAY_AUTH")} | {"HOME": str(home)}
    rc, out, job_id = jobs.submit(address, ["crfgan", "config", "--config", "tiny"], str(REPO), anon, timeout=120,
                                  agent_wait_s=0)
    assert rc != 0 and job_id is None, out[-2000:]
    assert re.search(r"401|unauthori[sz]ed|token", out, re.I), out[-2000:]

    fields = jobs.chain_fields("s3://crfgan/e2e", "tiny", "e2e")
    overrides = {"preprocess": [f"data.val_fraction={val_fraction_for_one_val_volume()}"],
                 "train": ["train.iterations=4", "train.log_every=2", "train.checkpoint_every=4", "train.val_every=4"],
                 "evaluate": ["eval.ssl_steps=5"]}
    results = jobs.run_chain(address, fields, overrides, working_dir=str(REPO), env=env)
    outs = {r["stage"]: re.sub(r"\x1b\[[0-9;]*m", "", r["output"]) for r in results}
    assert [r["stage"] for r in results] == [s for s, _ in jobs.CHAIN]
    for r in results:
        assert r["rc"] == 0 and r["job_id"], outs[r["stage"]][-4000:]
    assert "preprocess: 3 volumes in" in outs["preprocess"], outs["preprocess"][-3000:]
    assert "[train] done: iteration 4" in outs["train"] and "model crfgan-generator v" in outs["train"], \
        outs["train"][-3000:]

    # the job server agrees (asked through the CLI, in the cluster's auth environment)
    status = subprocess.run([str(Path(sys.executable).parent / "ray"), "job", "status", "--address", address,
                             results[-1]["job_id"]], capture_output=True, text=True, env=env, timeout=120, check=False)
    plain = re.sub(r"\x1b\[[0-9;]*m", "", status.stdout + status.stderr)
    assert status.returncode == 0 and "succeeded" in plain.lower(), plain

    # multi-node: the driver (on the head, which has no CPUs) and training rank 0 are on different nodes
    driver = re.search(r"\[train\] driver on node (\w+)", outs["train"]).group(1)
    rank0 = re.search(r"\[train\] rank 0 of 1 on node (\w+)", outs["train"]).group(1)
    assert driver != rank0, (driver, rank0)

    # secrets never reach a job's log: not the cluster token, not the S3 credentials the nodes hold
    for text in outs.values():
        assert token not in text
        for k in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
            assert os.environ[k] not in text

    # outputs on the S3 endpoint: shards + manifest, checkpoints of the run, MLflow's artifacts (proxied to S3)
    s3 = boto3.client("s3", endpoint_url=s3_url)

    def keys(bucket, prefix):
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return [o["Key"] for p in pages for o in p.get("Contents", [])]

    shard_keys = keys("crfgan", "e2e/shards/")
    assert "e2e/shards/manifest.json" in shard_keys and any(k.endswith(".parquet") and "/shards/shards/" in k
                                                            for k in shard_keys), shard_keys
    manifest = json.loads(s3.get_object(Bucket="crfgan", Key="e2e/shards/manifest.json")["Body"].read())
    assert manifest["volumes_ok"] == 3 and manifest["counts"]["split"] == {"train": 2, "val": 1}
    assert any("/checkpoint_" in k for k in keys("crfgan", "e2e/runs/e2e/")), keys("crfgan", "e2e/runs/")
    artifacts = keys("mlflow", "artifacts/")
    assert any(k.endswith(".png") and "/montages/" in k for k in artifacts), artifacts[:20]
    assert any(k.endswith("generator.safetensors") for k in artifacts), artifacts[:20]

    # and in the MLflow server: the registered version behind the alias, its run finished with val_l1 logged
    client = MlflowClient(mlflow_url)
    mv = client.get_model_version_by_alias("crfgan-generator", "candidate")
    run = client.get_run(mv.run_id)
    assert run.info.status == "FINISHED" and "val_l1" in run.data.metrics, run.data.metrics
    assert run.data.tags["crfgan.data_uri"] == "s3://crfgan/e2e/shards"
    assert mv.tags["data_manifest_hash"]

    # synthesis job: two volumes with sidecars and a job manifest on S3; evaluation logged to the model's run
    syn = keys("crfgan", "e2e/synthetic/")
    assert sum(k.endswith(".nii.gz") for k in syn) == 2 and sum(k.endswith(".json") and "/synthetic_" in k
                                                                 for k in syn) == 2, syn
    assert "e2e/synthetic/manifest.json" in syn, syn
    evaluated = client.get_run(mv.run_id).data.metrics
    assert any(k.startswith("eval.") for k in evaluated), sorted(evaluated)
    assert any(k.endswith("index.html") and "/evaluation/" in k for k in keys("mlflow", "artifacts/"))
