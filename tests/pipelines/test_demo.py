"""``crfgan demo`` end to end on the scans shipped inside the package: Ray Data → Ray Train → MLflow → NIfTI."""

import json

import nibabel as nib
import numpy as np

from crfgan.shards import read_volumes


# Ray-internal or library noise that once reached the demo's console, and must not again
NOISE = ("Failed to query Ray Train Controller", "tqdm is not installed", "Add type hints to the `predict` method",
         "`ExecutionOptions.exclude_resources` is deprecated", "Token authentication is enabled",
         "can be interpreted in multiple ways")


def test_demo_runs_end_to_end_on_the_shipped_scans(tmp_path):
    """As a user runs it: a fresh process that starts its own local Ray (so the workers' output reaches the console
    as it does for a user), stdout not a terminal."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    p = subprocess.run([sys.executable, "-m", "pipelines.cli", "demo", "--out", str(tmp_path), "--volumes", "2",
                        "--config", "tiny", "train.iterations=20", "train.log_every=10", "train.checkpoint_every=10"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=840)
    console = p.stdout + p.stderr
    assert p.returncode == 0, console[-4000:]
    for noise in NOISE:
        assert noise not in console, noise
    # two screens at most, leaving out: progress reports (Ray Data logs them every 10 s when stdout is not a terminal;
    # a progress bar's redraws share one line), and Ray Train's cleaner's traceback "Found multiple active Ray
    # instances", which only a machine running two Ray instances (this test's session cluster and the demo's) prints
    lines = [ln for ln in console.split("\n") if ln.strip() and "logging_progress.py" not in ln
             and "(PlacementGroupCleaner" not in ln]
    assert len(lines) <= 100, "\n".join(lines)
    manifest = json.loads((tmp_path / "shards" / "manifest.json").read_text())
    # every shipped scan trains; a held-back crop of each is the val split
    assert manifest["volumes_ok"] == 4 and manifest["volumes_failed"] == 0
    assert manifest["counts"]["split"] == {"train": 2, "val": 2}
    rows = {s: sorted(r["source_uri"] for r in read_volumes(tmp_path / "shards", s)) for s in ("train", "val")}
    assert [p.rsplit("/", 1)[-1] for p in rows["train"]] == ["FLAIR.nii.gz", "example_ct.nii.gz"]
    assert all("/heldout/" in p for p in rows["val"])
    printed = p.stdout
    assert "What these samples can and cannot show" in printed and "20\n    iterations on 2 volumes" in printed
    assert (tmp_path / "runs" / "mlflow.db").is_file()  # embedded MLflow default: sqlite under the storage folder
    from crfgan.synth import volume_seed

    for i in range(2):
        img = nib.load(tmp_path / "synthetic" / f"synthetic_{i:06d}.nii.gz")
        vol = img.get_fdata()  # trained on CT and MRI together: the model's normalised range, int16 + scl_slope
        assert vol.shape == (32, 32, 32) and np.isfinite(vol).all() and vol.min() >= -1 - 1e-6 and vol.max() <= 1 + 1e-6
        assert img.get_data_dtype() == np.int16 and nib.aff2axcodes(img.affine) == ("R", "A", "S")
        assert np.all(np.diag(img.affine)[:3] > 0)  # a real affine with the training spacing
        side = json.loads((tmp_path / "synthetic" / f"synthetic_{i:06d}.json").read_text())
        assert side["index"] == i and side["seed"] == volume_seed(0, i) and side["render"]["norm_stats"] == "global"
        assert side["model"] == "crfgan-generator" and side["version"] == "1" and side["run_id"]
        assert side["modality"] == "mixed" and side["spacing_zyx_mm"] == list(img.header.get_zooms()[::-1])
    job = json.loads((tmp_path / "synthetic" / "manifest.json").read_text())
    assert job["counts"] == {"written": 2, "skipped": 0, "failed": 0, "present": 2}
    a = np.asarray(nib.load(tmp_path / "synthetic" / "synthetic_000000.nii.gz").dataobj)
    b = np.asarray(nib.load(tmp_path / "synthetic" / "synthetic_000001.nii.gz").dataobj)
    assert not np.array_equal(a, b)  # different seeds, different volumes
