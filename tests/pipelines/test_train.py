"""Ray Train runs of the tiny config on real-scan shards: a worker killed by pid mid-run, resume by run name with
checkpoints on the loopback S3 endpoint, and ``crfgan train --local``."""

from __future__ import annotations

import glob
import json
import os
import signal
import threading
import time

import pytest

from tests.pipelines.mlflow_fixtures import tiny_shards  # noqa: F401


def _tiny(storage, name, iters, workers, every, *extra):
    from crfgan.config import load_config

    return load_config("tiny", [f"train.iterations={iters}", f"train.num_workers={workers}",
                                f"train.checkpoint_every={every}", f"train.log_every={every}", f"train.val_every={iters}",
                                "train.max_failures=2", f"train.storage_path={storage}", f"train.run_name={name}", *extra])


def _assert_lineage(state: dict, iters: int, samples_per_iter: int) -> list:
    """The checkpoint's lineage tiles [0, iters) with no overlap: no iteration was counted twice or skipped."""
    lineage = state["lineage"]
    assert lineage[0][0] == 0 and lineage[-1][1] == iters, lineage
    assert all(a[1] == b[0] for a, b in zip(lineage, lineage[1:])), f"gap or overlap in {lineage}"
    assert sum(e - s for s, e in lineage) == iters
    assert state["iteration"] == iters and state["samples_seen"] == iters * samples_per_iter
    return lineage


def test_worker_killed_mid_run_resumes_from_checkpoint(ray_local, tiny_shards, tmp_path):  # noqa: F811
    from pipelines.train import run as run_training

    iters, every = 40, 5
    storage, status = tmp_path / "runs", tmp_path / "status"
    cfg = _tiny(storage, "fault", iters, 2, every)
    killed: dict = {}

    def killer():
        """Once the controller has registered a checkpoint (its snapshot lists one) and rank 1 runs its first
        attempt, SIGKILL rank 1's process. A checkpoint folder alone is not enough: it exists while it is uploaded,
        before it is registered, and a restart then (rightly) begins from scratch. Bounded wait."""
        snapshot = storage / "fault" / "checkpoint_manager_snapshot.json"
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            try:
                registered = [r["metrics"]["iteration"] for r in json.loads(snapshot.read_text())["checkpoint_results"]]
            except (OSError, ValueError, KeyError):
                registered = []
            pids = [json.loads(open(p).read()) for p in glob.glob(str(status / "rank1-pid*.json"))]
            if registered and pids:
                killed["pid"], killed["registered"] = pids[0]["pid"], max(registered)
                os.kill(pids[0]["pid"], signal.SIGKILL)
                return
            time.sleep(0.1)

    th = threading.Thread(target=killer, daemon=True)
    th.start()
    summary = run_training(cfg, tiny_shards, mlflow_enabled=False, status_dir=str(status))
    th.join(timeout=5)
    assert killed.get("pid"), "the killer never found a checkpoint and rank 1's pid"

    state = summary["state"]
    lineage = _assert_lineage(state, iters, samples_per_iter=2 * cfg.train.batch_size)
    assert len(lineage) == 2, f"expected exactly one resume, lineage {lineage}"
    resumed_at = lineage[1][0]
    assert resumed_at % every == 0 and killed["registered"] <= resumed_at < iters
    assert summary["metrics"]["iteration"] == iters and summary["metrics"]["start_iteration"] == resumed_at
    assert summary["metrics"]["param_divergence"] == 0.0  # DDP kept both ranks' weights identical
    # a new process took rank 1 over, and it started at the resumed checkpoint
    rank1 = [json.loads(open(p).read()) for p in glob.glob(str(status / "rank1-pid*.json"))]
    assert sorted(r["start_iteration"] for r in rank1) == [0, resumed_at]
    assert {r["pid"] for r in rank1} - {killed["pid"]}, "rank 1 never restarted in a new process"

    # the finished run started again (what a resumed sweep does with a trial whose end Tune had not recorded): no
    # iteration runs, and the final result is reported again, not an earlier one
    from ray.train import UserCallback

    reports = tmp_path / "reports.jsonl"

    class Record(UserCallback):  # what Tune's report callback sees, written where this test can read it
        def after_report(self, run_context, metrics, checkpoint):
            with open(reports, "a") as f:
                f.write(json.dumps(metrics[0], default=str) + "\n")

    again = run_training(cfg, tiny_shards, mlflow_enabled=False, callbacks=[Record()])
    seen = [json.loads(line) for line in reports.read_text().splitlines()]
    assert len(seen) == 1 and seen[0]["resumed_finished"] == 1 and seen[0]["iteration"] == iters
    assert seen[0]["val_l1"] == summary["metrics"]["val_l1"] and seen[0]["resumed_checkpoint_path"]
    assert again["state"]["lineage"] == state["lineage"] and again["metrics"]["iteration"] == iters


def test_resume_by_run_name_with_checkpoints_on_s3(ray_local, tiny_shards, s3_server, fake_aws_env, capfd):  # noqa: F811
    import boto3

    from pipelines.cli import main as cli_main

    bucket = "crfgan-ckpt"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=bucket)
    host = s3_server.split("://", 1)[1]
    storage = f"s3://{bucket}/runs?endpoint_override={host}&scheme=http"
    common = ["train", "--data", tiny_shards, "--config", "tiny", "--storage", storage, "--run-name", "resume",
              "--no-mlflow", "train.num_workers=1", "train.checkpoint_every=3", "train.log_every=3", "train.val_every=3"]
    assert cli_main(common + ["train.iterations=6"]) == 0
    assert cli_main(common + ["train.iterations=9"]) == 0  # same name: continues at 6, not from scratch

    s3 = boto3.client("s3", endpoint_url=s3_server)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="runs/resume/")["Contents"]]
    states = sorted(k for k in keys if k.endswith("/state.json"))
    assert states, f"no checkpoint in S3: {keys[:20]}"
    assert any(k.endswith("weights.safetensors") for k in keys)
    latest = max((json.loads(s3.get_object(Bucket=bucket, Key=k)["Body"].read()) for k in states),
                 key=lambda st: st["iteration"])
    assert _assert_lineage(latest, 9, samples_per_iter=latest["world_size"] * 2) == [[0, 6], [6, 9]]

    # credentials: in no output of either run (driver and Ray workers' forwarded logs) and in no object written
    secrets = [fake_aws_env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")]
    out = "".join(capfd.readouterr())
    assert "resume" in out and not [x for x in secrets if x in out]
    small = [k for k in keys if not k.endswith(".safetensors")]
    for k in small:
        body = s3.get_object(Bucket=bucket, Key=k)["Body"].read()
        assert not [x for x in secrets if x.encode() in body], k


def test_local_trainer_from_shards(tiny_shards, tmp_path):  # noqa: F811
    from pipelines.cli import main as cli_main

    rc = cli_main(["train", "--local", "--data", tiny_shards, "--config", "tiny", "--storage", str(tmp_path),
                   "--run-name", "loc", "train.iterations=4", "train.log_every=2", "train.checkpoint_every=2"])
    assert rc == 0
    assert (tmp_path / "loc" / "generator" / "generator.safetensors").is_file()
    assert (tmp_path / "loc" / "checkpoint_000004" / "state.json").is_file()


def test_shard_size_mismatch_is_a_clear_error(tiny_shards):  # noqa: F811
    from crfgan.config import load_config
    from crfgan.shards import read_manifest
    from pipelines.train import _datasets

    cfg = load_config("tiny", ["model.image_size=64"])
    with pytest.raises(ValueError, match="model.image_size=32"):
        _datasets(cfg, tiny_shards, read_manifest(tiny_shards), 0.0)


def test_hagan_baseline_two_workers_keep_ddp_ranks_in_sync(ray_local, tiny_shards, tmp_path):  # noqa: F811
    """HA-GAN adds G^L, D^L and E^G, each its own DDP wrapper: no unused-parameter errors, identical weights."""
    from pipelines.train import run as run_training

    cfg = _tiny(tmp_path, "hagan", 6, 2, 3, "model.arch=hagan")
    summary = run_training(cfg, tiny_shards, mlflow_enabled=False)
    m = summary["metrics"]
    assert m["iteration"] == 6 and m["param_divergence"] == 0.0
    assert all(k in m for k in ("d_loss", "g_loss", "e_loss", "e_sub_loss")) and "crf_loss" not in m
    _assert_lineage(summary["state"], 6, samples_per_iter=2 * cfg.train.batch_size)


def test_every_epoch_reads_the_train_split_in_a_new_order(ray_local, tiny_shards):  # noqa: F811
    """Two executions (epochs) of the train dataset: the same items, in different orders."""
    import hashlib

    from crfgan.config import load_config
    from crfgan.shards import read_manifest
    from pipelines.train import _datasets

    ds = _datasets(load_config("tiny"), tiny_shards, read_manifest(tiny_shards), 0.0)["train"]

    def epoch():
        return [hashlib.sha1(b["volume"][0].tobytes()).hexdigest()[:8]
                for b in ds.iter_batches(batch_size=1, batch_format="numpy")]

    first, second = epoch(), epoch()
    assert sorted(first) == sorted(second) and len(set(first)) == 2  # both train volumes, as often each time
    assert first != second


def test_two_runs_with_one_seed_read_the_train_split_in_the_same_order(ray_local, tiny_shards):  # noqa: F811
    """Read tasks finish out of order; the seeded order survives them (a rerun sees the same batches)."""
    import hashlib

    from crfgan.config import load_config
    from crfgan.shards import read_manifest
    from pipelines.train import _datasets

    def epochs():
        ds = _datasets(load_config("tiny"), tiny_shards, read_manifest(tiny_shards), 0.25)["train"]
        return [[hashlib.sha1(b["volume"][0].tobytes()).hexdigest()[:8]
                 for b in ds.iter_batches(batch_size=1, batch_format="numpy")] for _ in range(2)]

    a, b = epochs(), epochs()
    assert len(a[0]) > 16  # several read tasks per epoch
    assert a == b and a[0] != a[1]


def test_local_checkpoints_are_refused_by_a_ray_run_with_a_clear_message(tiny_shards, tmp_path, capsys):  # noqa: F811
    from pipelines.cli import main as cli_main

    common = ["train", "--data", tiny_shards, "--config", "tiny", "--storage", str(tmp_path), "--run-name", "mix",
              "train.iterations=2", "train.log_every=2", "train.checkpoint_every=2", "--no-mlflow"]
    assert cli_main([*common, "--local"]) == 0
    assert cli_main(common) == 2
    assert "holds checkpoints of a --local run (checkpoint_000002); Ray Train cannot resume them" in capsys.readouterr().err


def test_torch_backend_is_nccl_on_gpu_workers():
    from crfgan.config import load_config
    from pipelines.train import torch_backend

    assert torch_backend(load_config("tiny", ["train.use_gpu=true"])) == "nccl"
    assert torch_backend(load_config("tiny")) == "gloo"


def test_class_conditional_ray_run_learns_ct_and_mri_and_stores_the_names(ray_local, tiny_shards, tmp_path):  # noqa: F811
    """The train split holds a CT and an MRI volume: model.num_classes=2 takes the class from the modality column."""
    from crfgan.checkpoint import load_generator
    from pipelines.train import run as run_training

    cfg = _tiny(tmp_path, "cond", 4, 1, 2, "model.num_classes=2")
    summary = run_training(cfg, tiny_shards, mlflow_enabled=False)
    assert {"d_class", "g_class"} <= set(summary["metrics"]) and summary["metrics"]["iteration"] == 4
    g = load_generator(summary["checkpoint"])
    assert g.cfg.class_names == ["ct", "mri"]
    import torch

    z = torch.randn(1, g.cfg.latent_dim)
    vols = [g.render(z, class_index=g.class_index([n])) for n in g.cfg.class_names]
    assert all(v.shape == (1, 1, 32, 32, 32) for v in vols) and not torch.equal(vols[0], vols[1])


def test_a_bad_data_argument_is_refused_before_ray_starts(tiny_shards, tmp_path):  # noqa: F811
    """A missing --data, raw scans, shards of another size, a --storage under a file: one line each, no Ray."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "scan.nii.gz").write_bytes(b"\x1f\x8b not really")
    runs = str(tmp_path / "runs")
    cases = [(str(tmp_path / "missing"), runs, [], "does not exist"), (str(raw), runs, [], "has no manifest.json"),
             (tiny_shards, runs, ["model.image_size=64"], "holds 32³ volumes"),
             (tiny_shards, str(raw / "scan.nii.gz" / "runs"), [], "is a file, not a folder")]
    code = ("import sys, ray; from pipelines.cli import main; rc = main(sys.argv[1:]); "
            "print('RAY', ray.is_initialized()); sys.exit(rc)")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    for data, storage, over, expected in cases:
        p = subprocess.run([sys.executable, "-c", code, "train", "--data", data, "--config", "tiny", "--storage",
                            storage, "--no-mlflow", *over], cwd=repo, env=env, capture_output=True,
                           text=True, timeout=300)
        assert p.returncode == 2, (data, p.stdout, p.stderr)
        assert expected in p.stderr and len(p.stderr.strip().splitlines()) == 1, (data, p.stderr)
        assert "RAY False" in p.stdout, (data, p.stdout)
