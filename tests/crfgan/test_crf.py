import pytest
import torch

from crfgan.config import load_config
from crfgan.crf import MeanFieldCRF


def make(nodes="slabs", iterations=10):
    cfg = load_config("tiny", [f"model.crf.nodes={nodes}", f"model.crf.iterations={iterations}"])
    m = cfg.model
    torch.manual_seed(0)
    a = torch.randn(3, m.emb_channels, m.emb_size, m.emb_size, m.emb_size)
    return MeanFieldCRF(m), a, torch.randn(3, 1)


@pytest.mark.parametrize("nodes", ["slabs", "channels"])
def test_zero_w_gives_the_unary(nodes):
    crf, a, u = make(nodes)
    assert torch.count_nonzero(crf.W) == 0
    assert torch.allclose(crf(a, u), u, rtol=0, atol=1e-6)


def test_effective_weights_are_symmetric():
    crf, a, u = make()
    with torch.no_grad():
        crf.W.copy_(torch.randn_like(crf.W))
    # Swapping W for its transpose must not change anything: only (W + Wᵀ)/2 is used.
    out = crf(a, u)
    with torch.no_grad():
        crf.W.copy_(crf.W.t().clone())
    assert torch.allclose(crf(a, u), out, atol=1e-6)


def test_iterations_change_the_result_once_w_is_nonzero():
    outs = []
    for t in (1, 2, 10):
        crf, a, u = make(iterations=t)
        with torch.no_grad():
            crf.W.fill_(0.7)
        outs.append(crf(a, u))
    assert not torch.allclose(outs[0], outs[1])
    assert not torch.allclose(outs[1], outs[2])
    assert not torch.allclose(outs[0], make()[2])  # differs from the unary


def test_gradient_reaches_w_and_with_w_nonzero_the_embedding():
    crf, a, u = make()
    a.requires_grad_(True)
    crf(a, u).sum().backward()
    assert crf.W.grad is not None and crf.W.grad.abs().sum() > 0
    assert a.grad is None or a.grad.abs().sum() == 0  # W = 0: the embedding has no say yet
    crf.zero_grad()
    a.grad = None
    with torch.no_grad():
        crf.W.fill_(0.3)
    crf(a, u).sum().backward()
    assert a.grad.abs().sum() > 0


def test_slab_nodes_are_depth_slabs_of_the_embedding():
    crf, a, _ = make("slabs")
    f = crf.features(a)
    n = crf.num_nodes
    d = a.shape[2] // n
    assert f.shape == (3, n, a.shape[1] * d * a.shape[3] * a.shape[4])
    assert torch.equal(f[1, 2], a[1, :, 2 * d : 3 * d].reshape(-1))


def test_identical_slabs_have_similarity_one():
    crf, a, _ = make("slabs")
    a = a[:, :, :1].expand_as(a).contiguous()  # every depth slice equal → every node equal
    sim = crf.similarity(a)
    assert torch.allclose(sim, torch.ones_like(sim), atol=1e-5)


def test_under_bf16_autocast_the_crf_runs_in_float32():
    """Autocast is off inside the CRF: same float32 result as without autocast (``.float()`` alone would not do it:
    the matmul of the similarity would run in bf16 under autocast)."""
    crf, a, u = make("channels")
    with torch.no_grad():
        crf.W.copy_(torch.randn_like(crf.W))
    ref = crf(a, u)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = crf(a, u)
        sim = crf.similarity(a)
        assert (a @ a.transpose(-1, -2)).dtype == torch.bfloat16  # autocast is really on here
    assert out.dtype == torch.float32 and sim.dtype == torch.float32
    assert torch.equal(out, ref)


@pytest.mark.parametrize("nodes", ["channels", "slabs"])
def test_mean_pairwise_keeps_the_output_scale_as_n_grows_and_sum_does_not(nodes):
    """With the same weights and node features, ``sum`` grows with N; ``mean`` does not."""

    def pairwise_part(n, mode):
        cfg = load_config("tiny", ["model.image_size=64", f"model.crf.nodes={nodes}", f"model.crf.num_nodes={n}",
                                   f"model.crf.pairwise={mode}", "model.crf.iterations=1"])
        m = cfg.model
        crf = MeanFieldCRF(m)
        with torch.no_grad():
            crf.W.fill_(0.1)
        a = torch.ones(1, m.emb_channels, m.emb_size, m.emb_size, m.emb_size)  # every node alike: sim = 1
        u = torch.full((1, 1), 2.0)
        return float((crf(a, u) - u).detach())  # the pairwise contribution after one iteration

    ns = [2, 4, 8, 16]
    summed = [pairwise_part(n, "sum") for n in ns]
    mean = [pairwise_part(n, "mean") for n in ns]
    assert all(abs(x - mean[0]) < 1e-5 for x in mean), mean
    assert all(abs(s / summed[0] - n / ns[0]) < 1e-4 for s, n in zip(summed, ns)), summed  # linear in N
