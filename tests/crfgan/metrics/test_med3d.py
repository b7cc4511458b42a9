import hashlib

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from crfgan.config import load_config
from crfgan.metrics.med3d import Med3DResNet50, load_med3d, med3d_features


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    sd = {f"module.{k}": v.contiguous() for k, v in Med3DResNet50().state_dict().items()}  # DataParallel keys
    sd["module.conv_seg.0.weight"] = torch.zeros(2, 2048, 1, 1, 1)  # MedicalNet's segmentation head: ignored
    p = tmp_path_factory.mktemp("med3d") / "resnet_50.safetensors"
    save_file(sd, str(p))
    return p, hashlib.sha256(p.read_bytes()).hexdigest()


def test_med3d_path_gives_2048_features_with_the_right_weights(weights):
    path, sha = weights
    net = load_med3d(path, sha)
    f = med3d_features(net, np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 32)))
    assert f.shape == (2, 2048) and np.isfinite(f).all()


def test_med3d_refuses_a_wrong_hash_or_file(weights, tmp_path):
    path, _ = weights
    with pytest.raises(ValueError, match="does not match"):
        load_med3d(path, "0" * 64)
    bad = tmp_path / "x.pth"
    bad.write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="not a safetensors file"):
        load_med3d(bad, hashlib.sha256(b"not safetensors").hexdigest())
    with pytest.raises(FileNotFoundError, match="not found"):
        load_med3d(tmp_path / "missing.safetensors", "0" * 64)


def test_med3d_skips_with_one_line_without_weights():
    from pipelines.evaluate import _med3d_metrics, _med3d_note

    cfg = load_config("tiny")
    note = _med3d_note(cfg)
    assert note.startswith("fid_med3d/mmd_med3d skipped") and "\n" not in note
    assert _med3d_metrics(cfg, None, [], print) == {}
