import numpy as np
import pytest
import torch

from crfgan.config import load_config
from crfgan.trainer import checkpoints, load_volumes, train_local


@pytest.fixture(scope="module")
def ct_volume(shared_data):
    return load_volumes([shared_data / "ct" / "example_ct.nii.gz"], load_config("tiny"))


def test_a_few_hundred_steps_on_a_real_scan_lower_the_encoder_l1(ct_volume):
    cfg = load_config("tiny", ["train.iterations=300", "train.log_every=10"])
    result = train_local(cfg, ct_volume, log=lambda s: None)
    hist = result.history
    assert len(hist) == 30 and result.iterations == 300
    assert all(np.isfinite(v) for row in hist for v in row.values())
    first = np.mean([r["e_loss"] for r in hist[:5]])
    last = np.mean([r["e_loss"] for r in hist[-5:]])
    assert last < 0.8 * first, (first, last)


def test_hagan_trains_from_the_same_loader(ct_volume):
    cfg = load_config("tiny", ["model.arch=hagan", "train.iterations=20", "train.log_every=10"])
    hist = train_local(cfg, ct_volume, log=lambda s: None).history
    assert "e_sub_loss" in hist[-1] and "crf_loss" not in hist[-1]
    assert all(np.isfinite(v) for row in hist for v in row.values())


def test_resume_continues_exactly_where_it_stopped(tmp_path, ct_volume):
    over = ["train.log_every=5", "train.checkpoint_every=5", "train.keep_checkpoints=2"]
    def cfg(n):
        return load_config("tiny", [f"train.iterations={n}", *over])

    full = train_local(cfg(15), ct_volume, tmp_path / "a", log=lambda s: None)
    train_local(cfg(10), ct_volume, tmp_path / "b", log=lambda s: None)  # "interrupted" at 10
    logs = []
    resumed = train_local(cfg(15), ct_volume, tmp_path / "b", log=logs.append)
    assert any("resumed" in line and "iteration 10" in line for line in logs)
    assert [r["iteration"] for r in resumed.history] == [15]  # no step counted twice
    assert [p.name for p in checkpoints(tmp_path / "b")] == ["checkpoint_000010", "checkpoint_000015"]
    for p, q in zip(full.nets.g.parameters(), resumed.nets.g.parameters()):
        assert torch.equal(p, q)  # bit-identical to the uninterrupted run
    assert (tmp_path / "b" / "generator" / "generator.safetensors").is_file()


def test_wrong_volume_shape_is_a_clear_error():
    with pytest.raises(AssertionError, match=r"volumes must be \(N, 32, 32, 32\)"):
        train_local(load_config("tiny"), np.zeros((1, 16, 16, 16), np.float32))
