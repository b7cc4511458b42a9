"""``crfgan synthesize`` against a real ``mlflow server`` (registry) and a bucket on the loopback S3 endpoint (moto),
with a real local Ray: geometry and HU with nibabel, sidecars with boto3, determinism across actor counts, a job
killed by pid and rerun, the registry's errors, and actor memory as the count grows ×10."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from tests.pipelines.conftest import FAKE_AWS
from tests.pipelines.mlflow_fixtures import mlflow_server  # noqa: F401

NAME = "crfgan-synth-test"
SPACING = [2.0, 1.5, 1.25]  # z, y, x


def _generator(tmp: Path, size: int = 32) -> Path:
    from crfgan.checkpoint import save_generator
    from crfgan.config import load_config
    from crfgan.generator import Generator
    from crfgan.synth import generator_metadata

    cfg = load_config("tiny", [f"model.image_size={size}", "data.modality=ct", f"mlflow.registered_model={NAME}"])
    torch.manual_seed(0)
    return save_generator(tmp / f"gen{size}", cfg, Generator(cfg.model), {}, generator_metadata(cfg, SPACING, ["ct"], "h1"))


@pytest.fixture(scope="module")
def registered(mlflow_server, tmp_path_factory):  # noqa: F811
    """A tiny untrained 32³ CT generator registered as version 1, aliases ``candidate`` and ``champion``."""
    from mlflow.tracking import MlflowClient

    from crfgan.checkpoint import load_generator
    from pipelines.tracking import register_generator

    gdir = _generator(tmp_path_factory.mktemp("gen"))
    client = MlflowClient(mlflow_server)
    run = client.create_run(client.create_experiment("synth-test"))
    cfg = load_generator(gdir).config
    name, version = register_generator(mlflow_server, run.info.run_id, cfg, str(gdir), {"data_manifest_hash": "h1"})
    client.set_registered_model_alias(name, "champion", version)
    import mlflow

    mlflow.set_tracking_uri(mlflow_server)
    recorded = mlflow.models.get_model_info(f"models:/{name}/{version}").metadata["synthesis"]
    assert recorded == load_generator(gdir).metadata and recorded["spacing_zyx_mm"] == SPACING  # readable without loading
    return {"name": name, "version": version, "run_id": run.info.run_id, "gdir": gdir}


def _cfg(*overrides):
    from crfgan.config import load_config

    return load_config(None, list(overrides))


def _load(data: bytes):
    return nib.Nifti1Image.from_bytes(gzip.decompress(data))


def _local_arrays(folder: Path) -> dict[int, np.ndarray]:
    return {int(p.name[10:16]): np.asarray(nib.load(p).dataobj) for p in sorted(folder.glob("synthetic_*.nii.gz"))}


def test_job_writes_correct_volumes_to_s3_and_rerun_skips(ray_local, s3_server, registered, mlflow_server, tmp_path):  # noqa: F811
    import boto3

    from crfgan.synth import volume_seed
    from pipelines.synthesize import run as run_job

    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.create_bucket(Bucket="synth")
    uri = f"models:/{NAME}@champion"
    m = run_job(uri, 3, "s3://synth/job1", _cfg("synth.actors=2"), tracking_uri=mlflow_server)
    assert m["counts"] == {"written": 3, "skipped": 0, "failed": 0, "present": 3} and m["actors"] == 2
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="synth", Prefix="job1/")["Contents"])
    assert keys == ["job1/job.json", "job1/manifest.json"] + [f"job1/synthetic_{i:06d}.{e}" for i in range(3)
                                                               for e in ("json", "nii.gz")]
    arrays = {}
    for i in range(3):
        img = _load(s3.get_object(Bucket="synth", Key=f"job1/synthetic_{i:06d}.nii.gz")["Body"].read())
        arr = np.asarray(img.dataobj)
        assert arr.shape == (32, 32, 32) and img.get_data_dtype() == np.int16
        assert arr.min() >= -1024 and arr.max() <= 600 and arr.std() > 0  # HU inside the CT window, not constant
        assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
        np.testing.assert_allclose(img.header.get_zooms(), SPACING[::-1])
        np.testing.assert_allclose(img.affine[:3, 3], -31 / 2 * np.array(SPACING[::-1]))  # centred on the origin
        side = json.loads(s3.get_object(Bucket="synth", Key=f"job1/synthetic_{i:06d}.json")["Body"].read())
        assert (side["model"], side["version"], side["alias"], side["run_id"]) == \
            (NAME, registered["version"], "champion", registered["run_id"])
        assert side["index"] == i and side["seed"] == volume_seed(0, i) and side["intensity"]["unit"] == "HU"
        assert side["config_hash"] and side["package_version"] and side["created"] and side["data_manifest_hash"] == "h1"
        arrays[i] = arr
    assert not np.array_equal(arrays[0], arrays[1])
    manifest = s3.get_object(Bucket="synth", Key="job1/manifest.json")["Body"].read().decode()
    assert not any(v in manifest for v in FAKE_AWS.values() if len(v) > 12)  # no credential in the manifest
    before = {k: s3.head_object(Bucket="synth", Key=k)["ETag"] for k in keys if k.endswith(".nii.gz")}

    again = run_job(uri, 4, "s3://synth/job1", _cfg("synth.actors=2"), tracking_uri=mlflow_server)
    assert again["counts"] == {"written": 1, "skipped": 3, "failed": 0, "present": 4}
    assert {k: s3.head_object(Bucket="synth", Key=k)["ETag"] for k in before} == before

    # determinism: a local job with one actor, by version instead of alias, starting at index 1
    local = run_job(f"models:/{NAME}/{registered['version']}", 2, str(tmp_path / "one"), _cfg("synth.actors=1"),
                    start=1, tracking_uri=mlflow_server)
    assert local["counts"]["written"] == 2 and local["actors"] == 1
    got = _local_arrays(tmp_path / "one")
    assert sorted(got) == [1, 2]
    for i in (1, 2):
        np.testing.assert_array_equal(got[i], arrays[i])
    mask = os.umask(0)
    os.umask(mask)
    mode = os.stat(tmp_path / "one" / "synthetic_000001.nii.gz").st_mode & 0o777
    assert mode == 0o666 & ~mask, oct(mode)  # what a plain open() gives (group-readable under 022), never mkstemp's 0600


def test_registry_errors_name_what_exists(ray_local, registered, mlflow_server, tmp_path, capsys, monkeypatch):  # noqa: F811
    from pipelines.cli import main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    cases = [(f"models:/{NAME}@nope", ["@candidate", "@champion", "versions: 1"]),
             (f"models:/{NAME}/9", ["no version 9", "versions: 1"]),
             ("models:/no-such-model@candidate", [NAME]),
             (str(tmp_path / "missing"), ["no such checkpoint folder"])]
    for uri, expected in cases:
        assert main(["synthesize", "--model", uri, "--count", "1", "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        for e in expected:
            assert e in err, (uri, err)
    assert main(["synthesize", "--model", str(registered["gdir"]), "--count", "1", "--out", str(tmp_path / "o"),
                 "--class", "lung"]) == 2
    assert "unconditional" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_killed_job_rerun_ends_with_exactly_n_volumes(ray_local, registered, mlflow_server, tmp_path):  # noqa: F811
    from pipelines.synthesize import run as run_job

    n, out = 60, tmp_path / "killed"
    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address, "MLFLOW_TRACKING_URI": mlflow_server,
           "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    cmd = [sys.executable, "-m", "pipelines.cli", "synthesize", "--model", f"models:/{NAME}@candidate", "--count", str(n),
           "--out", str(out), "synth.actors=1"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while len(list(out.glob("synthetic_*.nii.gz"))) < 3:
        assert proc.poll() is None, "the job ended before it could be killed"
        assert time.monotonic() < deadline, "the job wrote nothing in 180 s"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    last, stable_since = -1, time.monotonic()
    while time.monotonic() - stable_since < 3:  # the dead driver's actor is reaped by Ray shortly after
        count = len(list(out.glob("synthetic_*.nii.gz")))
        if count != last:
            last, stable_since = count, time.monotonic()
        time.sleep(0.2)
    done = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("synthetic_*.nii.gz")}
    assert 3 <= len(done) < n, f"kill came too late to test a restart: {len(done)} of {n} volumes"

    m = run_job(f"models:/{NAME}@candidate", n, str(out), _cfg("synth.actors=2"), tracking_uri=mlflow_server)
    assert m["counts"] == {"written": n - len(done), "skipped": len(done), "failed": 0, "present": n}
    vols = sorted(out.glob("synthetic_*.nii.gz"))
    assert [p.name for p in vols] == [f"synthetic_{i:06d}.nii.gz" for i in range(n)]
    assert len(list(out.glob("synthetic_*.json"))) == n and not list(out.glob(".tmp-*"))
    for p in vols:
        assert np.asarray(nib.load(p).dataobj).shape == (32, 32, 32)  # each whole and readable
    assert {name: (out / name).stat().st_ino for name in done} == {k: v[0] for k, v in done.items()}  # none rewritten
    assert {name: (out / name).stat().st_mtime_ns for name in done} == {k: v[1] for k, v in done.items()}


def test_actor_memory_stays_flat_as_the_count_grows(ray_local, tmp_path):
    """Peak RSS of the actor (a fresh pool per job) for 3 and for 30 volumes at 64³: one volume at a time."""
    from pipelines.synthesize import run as run_job

    gdir = _generator(tmp_path, 64)
    peaks = {}
    for n in (3, 30):
        m = run_job(str(gdir), n, str(tmp_path / f"n{n}"), _cfg("synth.actors=1"))
        assert m["counts"]["written"] == n
        peaks[n] = m["actor_peak_rss_mb"]
    assert peaks[3] > 0 and peaks[30] / peaks[3] < 1.10, peaks


def test_a_folder_belongs_to_one_job(ray_local, tmp_path, capsys):
    """A rerun with another seed, model, format, class or render setting is refused in one line before any work;
    another count (or actor count) of the same job completes it; files of an unknown job are never adopted."""
    from pipelines.cli import main
    from pipelines.synthesize import JobMismatch, run as run_job

    gdir = _generator(tmp_path)
    out = tmp_path / "job"
    assert run_job(str(gdir), 2, str(out), _cfg("synth.actors=1"))["counts"]["written"] == 2
    ident = json.loads((out / "job.json").read_text())
    assert ident["job_seed"] == 0 and ident["format"] == "nii.gz" and len(ident["weights_sha256"]) == 64
    before = sorted(p.name for p in out.iterdir())

    torch.manual_seed(1)  # another generator with the same name: a new version's weights
    from crfgan.checkpoint import load_generator, save_generator
    from crfgan.generator import Generator

    g0 = load_generator(gdir)
    other = save_generator(tmp_path / "other", g0.config, Generator(g0.config.model), {}, g0.metadata)
    cases = [(dict(seed=7), "--seed 0 there, 7 asked"), (dict(fmt="nii"), "--format nii.gz there, nii asked"),
             (dict(model=str(other)), "model gen32 there, other asked"), (dict(over=["synth.norm_stats=train"]),
                                                                      "synth.norm_stats=global there, train asked")]
    for kw, expected in cases:
        with pytest.raises(JobMismatch, match=expected.replace(".", r"\.")):
            run_job(kw.get("model", str(gdir)), 2, str(out), _cfg("synth.actors=1", *kw.get("over", [])),
                    seed=kw.get("seed"), fmt=kw.get("fmt", "nii.gz"))
    assert sorted(p.name for p in out.iterdir()) == before  # nothing written, manifest untouched

    rc = main(["synthesize", "--model", str(gdir), "--count", "2", "--seed", "7", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "pick another --out" in err, err

    m = run_job(str(gdir), 3, str(out), _cfg("synth.actors=2"))  # the same job, extended
    assert m["counts"] == {"written": 1, "skipped": 2, "failed": 0, "present": 3} and m["job_seed"] == 0

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "synthetic_000000.nii.gz").write_bytes((out / "synthetic_000000.nii.gz").read_bytes())
    with pytest.raises(JobMismatch, match="holds 1 synthetic volume"):
        run_job(str(gdir), 2, str(foreign), _cfg("synth.actors=1"))
    assert sorted(p.name for p in foreign.iterdir()) == ["synthetic_000000.nii.gz"]


def test_bad_count_and_output_are_refused_before_the_model_is_fetched(tmp_path, capsys):
    from pipelines.cli import main

    missing_model = str(tmp_path / "no-model")  # were the model fetched first, the error would name it
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    cases = [(["--count", "0", "--out", str(tmp_path / "o")], "--count must be at least 1, got 0"),
             (["--count", "2", "--start", "-1", "--out", str(tmp_path / "o")], "--start must be >= 0"),
             (["--count", "2", "--out", str(a_file / "sub")], f"{a_file} is a file, not a folder"),
             (["--count", "2", "--out", str(a_file)], f"{a_file} is a file, not a folder")]
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        cases.append((["--count", "2", "--out", str(ro / "x")], f"{ro} is not writable"))
    for args, expected in cases:
        assert main(["synthesize", "--model", missing_model, *args]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and expected in err, (args, err)
    assert not (tmp_path / "o").exists()


def test_synthesize_finds_the_registry_train_wrote_by_default(ray_local, tmp_path, monkeypatch):
    """No MLFLOW_TRACKING_URI, no mlflow.tracking_uri: `runs/mlflow.db` (crfgan train's default store) is used."""
    from mlflow.tracking import MlflowClient

    from crfgan.checkpoint import load_generator
    from pipelines.synthesize import run as run_job
    from pipelines.tracking import register_generator, tracking_uri

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    gdir = _generator(tmp_path)
    cfg = load_generator(gdir).config
    uri = tracking_uri(_cfg(), "runs")  # what crfgan train resolves with the default train.storage_path
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment("default-store", artifact_location=str(tmp_path / "art")))
    name, version = register_generator(uri, run.info.run_id, cfg, str(gdir), {"data_manifest_hash": "h1"})
    m = run_job(f"models:/{name}@candidate", 1, "syn", _cfg("synth.actors=1"))
    assert m["counts"]["written"] == 1 and m["model"]["version"] == version
    # a relative --out is the caller's folder, not the actors' working directory
    assert (tmp_path / "syn" / "synthetic_000000.nii.gz").is_file() and m["out"] == str(tmp_path / "syn")
