"""Multi-node rules (pipelines/cluster.py): local paths a stage would use from several nodes are refused, before any
work starts, with one line that says what to set. The probe task runs for real on the session's Ray node; a second
node with its own disk cannot exist on one machine, so a node that does not see a path is simulated by replacing
the probe's answer (the real two-node run, where every node shares this machine's disk, is tests/pipelines/test_jobs.py).
"""

from __future__ import annotations

import pytest

from pipelines import cluster
from tests.pipelines.mlflow_fixtures import tiny_shards  # noqa: F401


def test_s3_storage_gets_the_endpoint_pyarrow_needs():
    assert cluster.s3_storage("s3://b/runs", "http://127.0.0.1:9000") == \
        "s3://b/runs?endpoint_override=127.0.0.1%3A9000&scheme=http"
    assert cluster.s3_storage("s3://b/runs?endpoint_override=h:1&scheme=https", "http://x:2").endswith("h:1&scheme=https")
    assert cluster.s3_storage("s3://b/runs", "") == "s3://b/runs"
    assert cluster.s3_storage("/tmp/runs", "http://127.0.0.1:9000") == "/tmp/runs"


def test_local_paths_of_each_stage():
    assert [w for w, *_ in cluster.train_paths("s3://b/r", "http://mlflow:5000")] == []
    items = cluster.train_paths("/data/runs", "sqlite:////data/runs/mlflow.db")
    assert [(w.split()[0], p) for w, p, _, _ in items] == [("checkpoint", "/data/runs"), ("the", "/data/runs")]
    items = cluster.preprocess_paths(["/scans/*.nii.gz", "s3://b/x/"], "/out/shards")
    assert [(w, p, o) for w, p, _, o in items] == [("input", "/scans", False), ("output", "/out/shards", True)]


def test_probe_runs_on_the_node(ray_local, tmp_path):
    there = tmp_path / "there"
    there.write_text("")
    nodes = [n for n in ray_local.nodes() if n["Alive"]]
    seen = cluster._probe(ray_local, nodes, [str(there), str(tmp_path / "absent")])
    assert list(seen.values()) == [[True, False]] * len(nodes)


def test_a_local_ray_started_by_the_stage_is_never_refused(monkeypatch, tmp_path):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cluster.require_shared(None, cluster.train_paths(str(tmp_path), None), "training run", {"GPU": 64})


def _two_nodes(ray_local):
    real = [n for n in ray_local.nodes() if n["Alive"]][0]
    other = {**real, "NodeID": "f" * 56, "NodeManagerAddress": "10.0.0.7"}
    return [real, other]


def test_a_path_another_node_cannot_see_is_refused_in_one_line(ray_local, monkeypatch, tmp_path):
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")  # "joined a cluster" (the address itself is not used here)
    nodes = _two_nodes(ray_local)
    monkeypatch.setattr(ray_local, "nodes", lambda: nodes)
    asked = []

    def probe(ray, ns, paths):  # the real node sees everything; the simulated one nothing
        asked.append(paths)
        return {n["NodeID"]: [n is nodes[0]] * len(paths) for n in ns}

    monkeypatch.setattr(cluster, "_probe", probe)
    storage = tmp_path / "runs"
    with pytest.raises(cluster.NotSharedError) as e:
        cluster.require_shared(ray_local, cluster.train_paths(str(storage), f"sqlite:///{storage}/mlflow.db"),
                               "training run", {"CPU": 1})
    msg = str(e.value)
    assert "\n" not in msg and "10.0.0.7" in msg and "--storage s3://" in msg, msg
    assert asked and all(".crfgan-shared-" in p for p in asked[0])  # checked through marker files …
    assert list(storage.iterdir()) == []  # … which are removed again

    with pytest.raises(cluster.NotSharedError, match="MLFLOW_TRACKING_URI=http://"):
        cluster.require_shared(ray_local, cluster.train_paths("s3://b/runs", f"sqlite:///{tmp_path}/db/mlflow.db"),
                               "training run", {"CPU": 1})
    # S3 storage and an MLflow server: nothing local, nothing to check
    cluster.require_shared(ray_local, cluster.train_paths("s3://b/runs", "http://mlflow:5000"), "training run", {})


def test_nodes_still_to_join_cannot_be_checked(ray_local, monkeypatch, tmp_path):
    """An autoscaling cluster whose GPU workers are not up yet: a local path is refused (they could not see it)."""
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    with pytest.raises(cluster.NotSharedError, match="nodes still to join cannot be checked.*--storage s3://"):
        cluster.require_shared(ray_local, cluster.train_paths(str(tmp_path / "runs"), None), "training run",
                               {"CPU": 4, "GPU": 4})


def test_crfgan_train_and_preprocess_refuse_before_any_work(ray_local, tiny_shards, monkeypatch, tmp_path,  # noqa: F811
                                                              capsys):
    from pipelines.cli import main

    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    nodes = _two_nodes(ray_local)
    monkeypatch.setattr(ray_local, "nodes", lambda: nodes)
    monkeypatch.setattr(cluster, "_probe", lambda ray, ns, paths: {n["NodeID"]: [n is nodes[0]] * len(paths)
                                                                   for n in ns})
    storage = tmp_path / "runs"
    # real shards: a missing --data is refused even earlier, before Ray (test_train)
    rc = main(["train", "--data", tiny_shards, "--config", "tiny", "--storage", str(storage), "--run-name", "r"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and err.startswith("train: checkpoint storage"), err
    assert not (storage / "r").exists()  # no run folder, no checkpoint: refused before Ray Train started

    out = tmp_path / "shards"
    rc = main(["preprocess", "--input", str(tmp_path), "--output", str(out), "--config", "tiny"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "10.0.0.7" in err and "s3://" in err, err
    assert [p.name for p in out.iterdir()] == []  # no staging file, shard or manifest
