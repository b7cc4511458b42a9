"""``crfgan evaluate`` end to end: real tiny shards against synthetic NIfTI folders (CT int16 HU with sidecars, and
float [-1, 1]), local Ray, a real MLflow server for ``--model``; the report folder is checked file by file."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from tests.pipelines.mlflow_fixtures import mlflow_server, tiny_shards  # noqa: F401


def _write_sets(root, cfg):
    """Two synthetic sets from a random-weight generator: HU int16 + intensity sidecar, and float in [-1, 1]."""
    import nibabel as nib

    from crfgan.generator import Generator
    from crfgan.io import write_nifti

    torch.manual_seed(0)
    vols = Generator(cfg.model).eval().render(torch.randn(4, cfg.model.latent_dim))[:, 0].numpy()
    lo, hi = cfg.data.ct_window
    hu_dir, unit_dir = root / "hu", root / "unit"
    for i, v in enumerate(vols):
        hu = np.rint((v + 1) / 2 * (hi - lo) + lo).astype(np.int16).transpose(2, 1, 0)
        hu_dir.mkdir(exist_ok=True)
        nib.save(nib.Nifti1Image(hu, np.diag([2.0, 2.0, 2.0, 1.0])), hu_dir / f"synthetic_{i:06d}.nii.gz")
        (hu_dir / f"synthetic_{i:06d}.json").write_text(json.dumps(
            {"modality": "ct", "intensity": {"unit": "HU", "range": [lo, hi]}}))
        write_nifti(np.clip(v + 0.3, -1, 1), (2, 2, 2), unit_dir / f"s{i}.nii.gz")  # brighter: a worse set
    (hu_dir / "broken.nii.gz").write_bytes(b"\x1f\x8bnot really gzip")
    return vols, hu_dir, unit_dir


@pytest.fixture(scope="module")
def registered(mlflow_server, tmp_path_factory):  # noqa: F811
    """A random-weight tiny generator registered in the MLflow server (as training registers it)."""
    from mlflow.tracking import MlflowClient

    from crfgan.checkpoint import save_generator
    from crfgan.config import load_config
    from crfgan.generator import Generator
    from pipelines import tracking

    cfg = load_config("tiny", ["mlflow.registered_model=eval-test"])
    client = MlflowClient(mlflow_server)
    exp = client.create_experiment("eval-test")
    run_id = client.create_run(exp).info.run_id
    gdir = save_generator(tmp_path_factory.mktemp("gen") / "generator", cfg, Generator(cfg.model))
    name, version = tracking.register_generator(mlflow_server, run_id, cfg, str(gdir), {})
    return cfg, run_id, f"models:/{name}@{tracking.ALIAS}"


def test_evaluate_report_and_mlflow(ray_local, tiny_shards, registered, mlflow_server, tmp_path, monkeypatch, capsys):  # noqa: F811
    from PIL import Image

    from pipelines.cli import main as cli_main

    cfg, run_id, model_uri = registered
    vols, hu_dir, unit_dir = _write_sets(tmp_path, cfg)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    report = tmp_path / "report"
    rc = cli_main(["evaluate", "--real", tiny_shards, "--synthetic", str(hu_dir), "--synthetic", str(unit_dir),
                   "--name", "hu", "--name", "brighter", "--report", str(report), "--cache", str(tmp_path / "cache"),
                   "--model", model_uri, "eval.ssl_steps=10"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "broken.nii.gz" in out  # the bad file is named, the set goes on
    m = json.loads((report / "metrics.json").read_text())
    assert m["real"]["errors"] == [] and m["real"]["n"] == 3  # every shard volume loaded; a skipped one is listed
    assert m["synthetic"]["hu"]["n"] == 4 and m["synthetic"]["hu"]["errors"][0]["file"].endswith("broken.nii.gz")
    hu, bright = m["metrics"]["hu"], m["metrics"]["brighter"]
    for k in ("fd_ssl", "kid_ssl", "kid_ssl_std", "mmd_ssl", "spectrum_dist", "diversity_ratio", "nn_ratio"):
        assert np.isfinite(hu[k]), k
    # the shipped scans are CT + MRI: a mixed set, whose histogram distance stays on the model scale (no HU)
    assert m["real"]["modality"] == "mixed" and "hist_w1_hu" not in hu
    assert bright["hist_w1"] > hu["hist_w1"] > 0  # same volumes 0.3 brighter: further from the real histogram
    assert m["ratios"]["brighter"]["hist_w1"]["ratio"] > 1
    assert "difference" in m["ratios"]["brighter"]["kid_ssl"]  # signed: a difference, never a ratio
    assert list(m["metrics"]["brighter"])[0] == "quality_score"
    assert "seam_score" not in hu and any("seam score skipped" in n for n in m["notes"])  # 32³
    assert any(n.startswith("fid_med3d/mmd_med3d skipped") for n in m["notes"])
    assert len(m["extractor"]["sha256"]) == 64
    # the int16 HU volumes came back on the model's scale, within the int16 rounding
    from crfgan.metrics.sets import load_set

    back = load_set(str(hu_dir), "hu", cfg, log=lambda s: None).volumes
    assert np.abs(back - vols).max() < 2.0 / (cfg.data.ct_window[1] - cfg.data.ct_window[0]) + 1e-4

    # the report: files exist, PNGs are valid images, the HTML references only files that exist
    html = (report / "index.html").read_text()
    refs = re.findall(r"(?:src|href)='([^']+)'", html)
    assert len(refs) >= 5  # 3 montages, histograms, spectra (no seam profile at 32³)
    for r in refs:
        assert (report / r).is_file(), r
    for png in report.glob("*.png"):
        with Image.open(png) as im:
            im.verify()
    md = (report / "report.md").read_text()
    assert "How to read this" in md and "| fd_ssl |" in md

    from mlflow.tracking import MlflowClient

    run = MlflowClient(mlflow_server).get_run(run_id)
    assert run.data.metrics["eval.fd_ssl"] == pytest.approx(hu["fd_ssl"])
    arts = [a.path for a in MlflowClient(mlflow_server).list_artifacts(run_id, "evaluation")]
    assert "evaluation/index.html" in arts


def test_evaluate_missing_input_is_a_clear_error(tmp_path, capsys):
    from pipelines.cli import main as cli_main

    rc = cli_main(["evaluate", "--real", str(tmp_path / "nope"), "--synthetic", str(tmp_path), "--report",
                   str(tmp_path / "r"), "--config", "tiny"])
    assert rc == 2 and "nope does not exist" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_nifti_set_from_an_s3_prefix(s3_server, tmp_path):
    """NIfTI volumes and their sidecars under an s3:// prefix (the loopback S3 endpoint), read onto [-1, 1]."""
    import boto3

    from crfgan.config import load_config
    from crfgan.metrics.sets import load_set

    cfg = load_config("tiny")
    vols, hu_dir, _ = _write_sets(tmp_path, cfg)
    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.create_bucket(Bucket="synth")
    for p in hu_dir.iterdir():
        s3.upload_file(str(p), "synth", f"job/{p.name}")
    logs = []
    st = load_set("s3://synth/job", "s3set", cfg, log=logs.append)
    assert st.volumes.shape == (4, 32, 32, 32) and st.modality == "ct"
    assert np.abs(st.volumes - vols).max() < 2.0 / (cfg.data.ct_window[1] - cfg.data.ct_window[0]) + 1e-4
    assert st.files[0].startswith("s3://synth/job/") and "broken.nii.gz" in st.errors[0]["file"]


def test_config_defaults_to_the_real_shards_own(tmp_path):
    """No --config: a 32³ shard dataset is evaluated with its own config (the old ct64 default refused it)."""
    from crfgan.config import load_config
    from pipelines.evaluate import default_config

    shards = tmp_path / "shards"
    shards.mkdir()
    cfg32 = load_config("tiny", ["data.spacing_mm=3"])
    (shards / "manifest.json").write_text(json.dumps({"shards": [], "config": cfg32.to_dict()}))
    got = default_config(str(shards), None, ["eval.score_volumes=4"])
    assert got.model.image_size == 32 and got.data.spacing_mm == 3 and got.eval.score_volumes == 4
    assert default_config(str(shards), "ct64", []).model.image_size == 64  # an explicit --config wins
    assert default_config(str(tmp_path), None, []).model.image_size == 64  # a NIfTI folder: ct64, resized to the set


def test_evaluate_reuses_the_extractor_crfgan_train_cached(ray_local, tiny_shards, tmp_path, capsys):  # noqa: F811
    """``crfgan train`` caches the SSL extractor under ``<train.storage_path>/quality`` by the manifest's hash;
    ``crfgan evaluate`` with the same storage path and no ``--cache`` finds it there instead of training another."""
    from crfgan.config import load_config
    from crfgan.shards import read_manifest
    from pipelines.cli import main as cli_main
    from pipelines.quality import quality_state

    storage = tmp_path / "runs"
    cfg = load_config("tiny", ["eval.ssl_steps=5", "eval.quick_volumes=2", f"train.storage_path={storage}"])
    lines: list[str] = []
    state = quality_state(cfg, tiny_shards, read_manifest(tiny_shards), str(storage), log=lines.append)
    assert state is not None and any("training the SSL extractor" in s for s in lines)
    vols, hu_dir, _ = _write_sets(tmp_path, cfg)
    capsys.readouterr()
    rc = cli_main(["evaluate", "--real", tiny_shards, "--synthetic", str(hu_dir), "--report", str(tmp_path / "rep"),
                   "--config", "tiny", "eval.ssl_steps=5", f"train.storage_path={storage}"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "from the cache" in out and "training the SSL extractor" not in out, out
    m = json.loads((tmp_path / "rep" / "metrics.json").read_text())
    assert m["extractor"]["sha256"] == state["extractor_sha256"]  # the very extractor training uses
