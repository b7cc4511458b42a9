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


def test_local_training_uses_a_gpu_only_when_asked(monkeypatch):
    from crfgan.trainer import select_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU "present" must not be taken unasked
    assert select_device(load_config("tiny")).type == "cpu"
    assert select_device(load_config("tiny", ["train.use_gpu=true"])).type == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="train.use_gpu=true but PyTorch sees no CUDA device"):
        select_device(load_config("tiny", ["train.use_gpu=true"]))


def test_a_ray_train_run_folder_is_refused_by_the_local_trainer(tmp_path, ct_volume):
    run = tmp_path / "run"
    (run / "checkpoint_2026-11-27_10-00-00.000000").mkdir(parents=True)
    (run / "checkpoint_manager_snapshot.json").write_text("{}")
    with pytest.raises(RuntimeError, match="holds a Ray Train run.*without --local"):
        train_local(load_config("tiny", ["train.iterations=1"]), ct_volume, run, log=lambda s: None)


def test_classes_come_from_the_data_and_unknown_values_are_refused():
    from crfgan.trainer import assign_classes

    assert assign_classes(load_config("tiny"), ["ct", "mri"]) is None  # unconditional
    cfg = load_config("tiny", ["model.num_classes=2"])
    assert assign_classes(cfg, ["mri", "ct", "mri"]).tolist() == [1, 0, 1] and cfg.model.class_names == ["ct", "mri"]
    with pytest.raises(ValueError, match="1 distinct 'modality' values \\(ct\\) but model.num_classes=2"):
        assign_classes(load_config("tiny", ["model.num_classes=2"]), ["ct", "ct"])
    named = load_config("tiny", ["model.num_classes=2", "model.class_names=[ct, mri]"])
    assert assign_classes(named, ["mri"]).tolist() == [1]  # given names may cover classes this data lacks
    with pytest.raises(ValueError, match="'pet' is not in model.class_names"):
        assign_classes(named, ["pet"])
