import numpy as np
import pytest
import torch

from crfgan.metrics import distances as D
from crfgan.metrics.features import SSLParams, extract, from_bytes, to_bytes, train_extractor
from crfgan.metrics.quick import get_extractor

from .test_physics import _blur, _noise, _shift

PARAMS = SSLParams(steps=30, batch=8, seed=3)


@pytest.fixture(scope="module")
def extractor(real32):
    return train_extractor(real32, "datahash", PARAMS)


def test_extractor_is_deterministic_for_a_seed_and_leaves_the_global_rng(real32, extractor):
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    again = train_extractor(real32, "datahash", PARAMS)
    assert torch.equal(torch.rand(3), before)  # the global RNG stream is untouched
    assert again.sha256 == extractor.sha256
    other = train_extractor(real32, "datahash", SSLParams(steps=30, batch=8, seed=4))
    assert other.sha256 != extractor.sha256
    assert not any(p.requires_grad for p in extractor.net.parameters()) and not extractor.net.training


def test_round_trip_through_safetensors_bytes(real32, extractor):
    raw = to_bytes(extractor)
    back = from_bytes(raw, expected_sha256=extractor.sha256)
    assert back.data_hash == "datahash" and back.params == PARAMS
    np.testing.assert_array_equal(extract(back, real32), extract(extractor, real32))
    with pytest.raises(ValueError, match="does not match"):
        from_bytes(raw, name="x.safetensors", expected_sha256="0" * 64)


def test_feature_distances_ideal_on_itself_and_monotone(real32, extractor):
    f = extract(extractor, real32)
    assert f.shape == (len(real32), extractor.dim)
    assert D.frechet_distance(f, f) == pytest.approx(0.0, abs=1e-6)
    for distort in (lambda s: _noise(real32, s), lambda s: _blur(real32, 4 * s), lambda s: _shift(real32, int(20 * s))):
        fds = [D.frechet_distance(f, extract(extractor, distort(s))) for s in (0.1, 0.25, 0.5)]
        mmd = [D.mmd_gaussian(f, extract(extractor, distort(s))) for s in (0.1, 0.25, 0.5)]
        assert fds == sorted(fds) and fds[0] > 0, fds
        assert mmd[-1] > mmd[0], mmd


def test_cache_by_extractor_and_data_hash(tmp_path, real32):
    calls = []

    def volumes():
        calls.append(1)
        return real32

    logs = []
    ext, feats = get_extractor(volumes, "abc", PARAMS, cache_uri=str(tmp_path), log=logs.append)
    ext2, feats2 = get_extractor(volumes, "abc", PARAMS, cache_uri=str(tmp_path), log=logs.append)
    assert len(calls) == 1 and ext2.sha256 == ext.sha256
    np.testing.assert_array_equal(feats, feats2)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert len(names) == 2 and any(ext.sha256[:16] in n and "abc" in n for n in names), names
    get_extractor(volumes, "other", PARAMS, cache_uri=str(tmp_path), log=logs.append)  # another data set: retrain
    assert len(calls) == 2
