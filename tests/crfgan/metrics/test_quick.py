import hashlib

import numpy as np
import pytest
import torch

from crfgan.config import load_config
from crfgan.metrics import quick as Q
from crfgan.metrics.features import SSLParams, extract, extractor_name

PARAMS = SSLParams(width=2, steps=2, batch=2, seed=1)
S = 32


def _real(n=4, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (n, S, S, S)).astype(np.float32)


class FakeGenerator:
    """Records every render call; a volume is a fixed function of its latent (and class)."""

    def __init__(self):
        self.training = True
        self.calls = []

    def eval(self):
        self.training = False
        return self

    def train(self, mode=True):
        self.training = mode
        return self

    def render(self, z, tiled, slab, halo, norm_stats, class_index=None):
        self.calls.append({"z": z.clone(), "training": self.training, "class_index": class_index})
        a = torch.tanh(z[:, :8].mean(1)) + (0.0 if class_index is None else 0.1 * class_index.float())
        b = torch.tanh(z[:, 8:16].mean(1))
        zz, yy, _ = torch.meshgrid(*(torch.linspace(-0.5, 0.5, S),) * 3, indexing="ij")
        vol = a[:, None, None, None] * zz + b[:, None, None, None] * yy  # (N, S, S, S) in [-1, 1]
        return vol[:, None]


def test_ssl_params_come_from_the_eval_config():
    cfg = load_config("tiny", ["eval.ssl_width=3", "eval.ssl_steps=7", "eval.ssl_batch=5", "eval.ssl_seed=9"])
    p = Q.ssl_params(cfg)
    assert (p.width, p.steps, p.batch, p.seed) == (3, 7, 5, 9)


def test_cache_key_includes_max_volumes(tmp_path):
    calls = []

    def volumes(n):
        def f():
            calls.append(n)
            return _real(n)
        return f

    quiet = dict(cache_uri=str(tmp_path), log=lambda s: None)
    e2, f2 = Q.get_extractor(volumes(2), "data", PARAMS, max_volumes=2, **quiet)
    e4, f4 = Q.get_extractor(volumes(4), "data", PARAMS, max_volumes=4, **quiet)
    assert calls == [2, 4] and len(f2) == 2 and len(f4) == 4  # a different cap is not a cache hit
    key2 = hashlib.sha256(b"data|max_volumes=2").hexdigest()[:16]
    assert (tmp_path / extractor_name(key2, PARAMS)).is_file()
    assert not (tmp_path / extractor_name("data", PARAMS)).exists()  # the uncapped key is another entry
    again, fa = Q.get_extractor(volumes(2), "data", PARAMS, max_volumes=2, **quiet)
    assert calls == [2, 4] and again.sha256 == e2.sha256  # same cap: read back, nothing recomputed
    np.testing.assert_array_equal(fa, f2)
    assert len(list(tmp_path.iterdir())) == 4  # an extractor and its real features per cap


def test_missing_real_features_are_recomputed_with_the_cached_extractor(tmp_path):
    calls = []

    def volumes():
        calls.append(1)
        return _real(3)

    quiet = dict(cache_uri=str(tmp_path), log=lambda s: None)
    ext, feats = Q.get_extractor(volumes, "d", PARAMS, **quiet)
    (feat_file,) = [p for p in tmp_path.iterdir() if p.name.startswith("real-features")]
    feat_file.unlink()
    ext2, feats2 = Q.get_extractor(volumes, "d", PARAMS, **quiet)
    assert ext2.sha256 == ext.sha256 and len(calls) == 2 and feat_file.is_file()  # not retrained; rewritten
    np.testing.assert_allclose(feats2, feats, rtol=1e-6, atol=1e-9)


def test_no_cache_uri_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    calls = []
    Q.get_extractor(lambda: calls.append(1) or _real(2), "d", PARAMS, log=lambda s: None)
    Q.get_extractor(lambda: calls.append(1) or _real(2), "d", PARAMS, log=lambda s: None)
    assert len(calls) == 2 and list(tmp_path.iterdir()) == []


def test_quick_state_holds_the_real_feature_gaussian():
    ext, feats = Q.get_extractor(lambda: _real(4), "d", PARAMS, log=lambda s: None)
    st = Q.quick_state(ext, feats)
    np.testing.assert_allclose(st["mu"], feats.mean(0), rtol=1e-10)
    np.testing.assert_allclose(st["sigma"], np.cov(feats.T), rtol=1e-10, atol=1e-14)
    assert st["extractor_sha256"] == ext.sha256 and isinstance(st["extractor"], bytes)


@pytest.mark.parametrize("classes", [0, 3])
def test_render_fixed_uses_the_fixed_seeds_in_eval_mode(classes):
    cfg = load_config("tiny", [f"model.num_classes={classes}"])
    g = FakeGenerator()
    vols = Q.render_fixed(g, cfg, 5)
    assert vols.shape == (5, S, S, S) and g.training  # training mode restored
    assert [len(c["z"]) for c in g.calls] == [2, 2, 1] and not any(c["training"] for c in g.calls)
    z = torch.cat([c["z"] for c in g.calls])
    for i in range(5):
        ref = torch.randn(1, cfg.model.latent_dim, generator=torch.Generator().manual_seed(Q.QUICK_SEED + i))
        assert torch.equal(z[i : i + 1], ref)
    if classes:
        assert torch.cat([c["class_index"] for c in g.calls]).tolist() == [i % classes for i in range(5)]
    else:
        assert all(c["class_index"] is None for c in g.calls)
    np.testing.assert_array_equal(Q.render_fixed(FakeGenerator(), cfg, 3), vols[:3])  # seed i → the same volume
    assert len({v.tobytes() for v in vols}) == 5


def test_fd_ssl_quick_is_zero_against_its_own_render_and_positive_otherwise():
    cfg = load_config("tiny", ["eval.quick_volumes=4"])
    ext, _ = Q.get_extractor(lambda: _real(4), "d", PARAMS, log=lambda s: None)
    own = extract(ext, Q.render_fixed(FakeGenerator(), cfg, 4))
    assert Q.fd_ssl_quick(FakeGenerator(), cfg, Q.quick_state(ext, own)) == pytest.approx(0.0, abs=1e-6)
    other = Q.quick_state(ext, extract(ext, _real(4, seed=5)))
    assert Q.fd_ssl_quick(FakeGenerator(), cfg, other) > 1e-3
