"""MLflow tracking of a 2-worker Ray Train run against a real ``mlflow server``: params, metrics, montages,
input dataset, registered generator with alias ``candidate`` that loads back through MLflow and renders."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tests.pipelines.mlflow_fixtures import mlflow_server, tiny_shards  # noqa: F401

ITERS = 12


@pytest.fixture(scope="module")
def tracked_run(ray_local, tiny_shards, mlflow_server, tmp_path_factory, monkeypatch_module):  # noqa: F811
    from crfgan.config import load_config
    from pipelines.train import run as run_training

    monkeypatch_module.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    storage = tmp_path_factory.mktemp("runs")
    cfg = load_config("tiny", [f"train.iterations={ITERS}", "train.num_workers=2", "train.checkpoint_every=6",
                               "train.log_every=3", "train.val_every=6", f"train.storage_path={storage}",
                               "train.run_name=tracked", "mlflow.experiment=test-train",
                               "mlflow.registered_model=crfgan-test-generator"])
    summary = run_training(cfg, tiny_shards)
    return cfg, summary, storage


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_two_worker_run_trains_and_checkpoints(tracked_run):
    cfg, summary, storage = tracked_run
    m = summary["metrics"]
    assert m["iteration"] == ITERS and m["world_size"] == 2
    for k in ("d_loss", "g_loss", "crf_loss", "e_loss", "val_l1", "fd_ssl_quick"):
        assert math.isfinite(m[k]), f"{k} = {m[k]}"
    assert m["fd_ssl_quick"] > 0
    assert m["samples_seen"] == ITERS * 2 * cfg.train.batch_size
    assert summary["state"]["iteration"] == ITERS and summary["state"]["lineage"] == [[0, ITERS]]
    ckpts = sorted(p.name for p in (storage / "tracked").iterdir() if p.is_dir() and p.name.startswith("checkpoint_"))
    assert len(ckpts) == 2, ckpts  # at 6 and 12
    assert (storage / "tracked" / ckpts[-1] / "weights.safetensors").is_file()


def test_mlflow_run_has_params_metrics_artifacts(tracked_run, mlflow_server):  # noqa: F811
    from mlflow.tracking import MlflowClient

    cfg, summary, _ = tracked_run
    client = MlflowClient(mlflow_server)
    run = client.get_run(summary["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["model.crf.iterations"] == str(cfg.model.crf.iterations)
    assert run.data.params["train.iterations"] == str(ITERS)
    assert len(run.data.params) == len(cfg.flat())
    for k in ("d_loss", "g_loss", "crf_loss", "e_loss", "its_per_s", "samples_per_s", "peak_mem_mb_rank0",
              "peak_mem_mb_rank1", "val_l1", "fd_ssl_quick"):
        assert k in run.data.metrics, k
    steps = [h.step for h in client.get_metric_history(summary["run_id"], "g_loss")]
    assert steps == [3, 6, 9, 12]
    assert run.data.metrics["peak_mem_mb_rank1"] > 0
    montages = [a.path for a in client.list_artifacts(summary["run_id"], "montages")]
    assert montages == ["montages/step_0000006.png", "montages/step_0000012.png"]
    assert [a.path for a in client.list_artifacts(summary["run_id"], "data")] == ["data/manifest.json"]
    assert run.inputs.dataset_inputs and run.inputs.dataset_inputs[0].dataset.digest == run.data.tags["data_manifest_hash"]
    local = client.download_artifacts(summary["run_id"], montages[0])
    from PIL import Image

    img = np.asarray(Image.open(local))
    assert img.ndim == 2 and img.shape[1] == 3 * img.shape[0] // 2 and img.std() > 0  # 2 volumes × 3 views
    assert [a.path for a in client.list_artifacts(summary["run_id"], "curves")] == ["curves/curves.png"]
    curves = np.asarray(Image.open(client.download_artifacts(summary["run_id"], "curves/curves.png")))
    assert curves.shape[1] > 2 * curves.shape[0] and curves.std() > 0  # the quality, collapse and loss panels


def test_registered_generator_loads_and_renders(tracked_run, mlflow_server):  # noqa: F811
    import mlflow
    from mlflow.tracking import MlflowClient

    cfg, summary, _ = tracked_run
    name, version = summary["model"]
    client = MlflowClient(mlflow_server)
    mv = client.get_model_version_by_alias(name, "candidate")
    assert mv.version == version and mv.run_id == summary["run_id"]
    assert len(mv.tags["data_manifest_hash"]) == 16 and mv.tags["git_commit"]
    mlflow.set_tracking_uri(mlflow_server)
    model = mlflow.pyfunc.load_model(f"models:/{name}@candidate")
    vols = model.predict(np.array([0, 1, 0]))
    s = cfg.model.image_size
    assert vols.shape == (3, s, s, s) and vols.dtype == np.float32
    assert np.abs(vols).max() <= 1.0 and vols.std() > 0
    np.testing.assert_array_equal(vols[0], vols[2])  # same seed, same volume
    assert not np.array_equal(vols[0], vols[1])
    # the same weights outside MLflow (the run's last checkpoint) render the same volume
    from crfgan.checkpoint import load_generator
    from crfgan.synth import render_volumes

    g = load_generator(summary["checkpoint"])
    np.testing.assert_allclose(render_volumes(g, cfg, [1])[0], vols[1], atol=1e-5)  # batch 1 vs 3: float rounding only


def test_scrub_uri_hides_credentials():
    from pipelines.tracking import scrub_uri

    s = scrub_uri("s3://AKIA:SECRETVALUE@bucket/p?endpoint_override=127.0.0.1:9000&secret_key=xyz&scheme=http")
    assert "SECRETVALUE" not in s and "xyz" not in s and "AKIA" not in s
    assert s.startswith("s3://bucket/p?") and "endpoint_override=127.0.0.1%3A9000" in s
    assert scrub_uri("sqlite:////tmp/runs/mlflow.db") == "sqlite:////tmp/runs/mlflow.db"  # no slash lost
    assert scrub_uri("http://u:pw@127.0.0.1:5000") == "http://127.0.0.1:5000"


def test_reading_stages_find_the_store_train_writes_by_default(tmp_path, monkeypatch):
    from crfgan.config import load_config
    from pipelines.tracking import lookup_tracking_uri, tracking_uri

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = load_config("tiny", [f"train.storage_path={tmp_path / 'runs'}"])
    assert lookup_tracking_uri(cfg) is None and not (tmp_path / "runs").exists()  # looking never creates a store
    written = tracking_uri(cfg, str(tmp_path / "runs"))  # what crfgan train uses with the same storage
    (tmp_path / "runs" / "mlflow.db").write_bytes(b"")
    assert lookup_tracking_uri(cfg) == written == f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert lookup_tracking_uri(cfg) == "http://127.0.0.1:5000"
    cfg.mlflow.tracking_uri = "http://127.0.0.1:6000"
    assert lookup_tracking_uri(cfg) == "http://127.0.0.1:6000"


def test_registering_the_same_checkpoint_again_reuses_its_version(tracked_run, tiny_shards, mlflow_server):  # noqa: F811
    """What a sweep resumed after a kill during its registration does: the same run's same checkpoint is not
    registered twice; the alias moves to the existing version."""
    from mlflow.tracking import MlflowClient

    from crfgan.shards import read_manifest
    from pipelines.tracking import register_checkpoint

    cfg, summary, _ = tracked_run
    name, version = summary["model"]
    client = MlflowClient(mlflow_server)
    before = client.search_model_versions(f"name='{name}'")
    again = register_checkpoint(mlflow_server, summary["run_id"], cfg, summary["checkpoint"], read_manifest(tiny_shards),
                                tiny_shards, alias="again")
    assert again == (name, version)
    assert len(client.search_model_versions(f"name='{name}'")) == len(before)
    assert client.get_model_version_by_alias(name, "again").version == version
    assert client.get_model_version(name, version).tags["iterations"] == str(ITERS)


def test_rerun_with_same_name_continues_the_mlflow_run(tracked_run, tiny_shards, mlflow_server):  # noqa: F811
    """Runs last in this module: resuming the Ray run (same storage + name) reopens its MLflow run."""
    from mlflow.tracking import MlflowClient

    from crfgan.config import config_from_dict
    from pipelines.train import run as run_training

    cfg, first, _ = tracked_run
    d = cfg.to_dict()
    d["train"]["iterations"] = ITERS + 3
    again = run_training(config_from_dict(d), tiny_shards)
    assert again["run_id"] == first["run_id"]
    assert again["state"]["lineage"] == [[0, ITERS], [ITERS, ITERS + 3]]
    client = MlflowClient(mlflow_server)
    run = client.get_run(first["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["resume.train.iterations"] == str(ITERS + 3)
    assert [(h.step, h.value) for h in client.get_metric_history(first["run_id"], "resumed_from")] == [(0, 0), (ITERS, ITERS)]
    name, version = again["model"]
    assert int(version) == int(first["model"][1]) + 1
    assert client.get_model_version_by_alias(name, "candidate").version == version
