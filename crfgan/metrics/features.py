"""A small self-supervised 3D feature extractor, trained in the project on the real training split.

Never the GAN's own discriminator or encoder (that would be circular). Objective: SimCLR's NT-Xent (Chen et al.,
ICML 2020) over crops. A batch draws ``batch`` random boxes (½ to whole edge, isotropic) from random training
volumes; each box gives two views (a sub-box of 80–100 % of it, a left-right flip, an intensity gain/offset and
Gaussian noise), resized to ``INPUT``³. Instances are regions, so one scan is enough to train on.

Features of a volume (``extract``): the encoder's pooled output on the whole volume resized to ``INPUT``³ and the
mean over its 8 octants (each resized to ``INPUT``³) — global layout plus local texture, both within the views
the encoder was trained on — concatenated: ``2 * 4 * width`` values.

Determinism: the weights are a function of (volumes, seed, hyper-parameters) on one machine and thread count:
initialisation and every random draw come from generators seeded by ``seed`` (the caller's global RNG is left
untouched). The extractor is stored as safetensors with one metadata entry (``crfgan_ssl``: JSON with the
hyper-parameters, seed and the data hash it was trained on); its identity is the SHA-256 of that file.
Real-set features are cached as ``.npz`` (no pickle) named by (extractor hash, data hash).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

INPUT = 32  # the encoder's input edge
FORMAT = "crfgan-ssl-extractor/1"
META_KEY = "crfgan_ssl"


@dataclass
class SSLParams:
    width: int = 8  # channels of the first block; blocks are w, 2w, 4w; features 4w per view
    steps: int = 100
    batch: int = 16
    lr: float = 2e-3
    temperature: float = 0.2
    seed: int = 0


class SSLEncoder(nn.Module):
    """(B, 1, 32, 32, 32) → (B, 4w): three stride-2 conv blocks (16³, 8³, 4³) and global average pooling; a
    projection head for the contrastive loss only."""

    def __init__(self, width: int = 8):
        super().__init__()
        w = width
        layers, cin = [], 1
        for i, cout in enumerate((w, 2 * w, 4 * w)):
            layers += [nn.Conv3d(cin, cout, 3, stride=2, padding=1), nn.GroupNorm(min(4, cout), cout), nn.ReLU()]
            if i:  # a second conv at 8³ and 4³ (none at 16³, where it would cost most)
                layers += [nn.Conv3d(cout, cout, 3, padding=1), nn.ReLU()]
            cin = cout
        self.body = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Linear(4 * w, 4 * w), nn.ReLU(), nn.Linear(4 * w, 4 * w))
        self.dim = 4 * w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).mean(dim=(2, 3, 4))


@dataclass
class Extractor:
    net: SSLEncoder
    params: SSLParams
    data_hash: str
    sha256: str = ""

    @property
    def dim(self) -> int:
        return 2 * self.net.dim


def _resize(x: torch.Tensor, size: int = INPUT) -> torch.Tensor:
    return F.interpolate(x, size=(size, size, size), mode="trilinear", align_corners=False)


def _box(g: torch.Generator, shape, frac_lo: float, frac_hi: float):
    f = frac_lo + (frac_hi - frac_lo) * float(torch.rand((), generator=g))
    sizes = [max(2, round(n * f)) for n in shape]
    starts = [int(torch.randint(0, n - s + 1, (), generator=g)) for n, s in zip(shape, sizes)]
    return tuple(slice(a, a + s) for a, s in zip(starts, sizes))


def _view(region: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    v = region[(slice(None), slice(None)) + _box(g, region.shape[2:], 0.8, 1.0)]
    v = _resize(v)
    if float(torch.rand((), generator=g)) < 0.5:
        v = v.flip(-1)  # left-right
    gain = 0.9 + 0.2 * float(torch.rand((), generator=g))
    offset = 0.1 * (float(torch.rand((), generator=g)) - 0.5)
    sigma = 0.03 * float(torch.rand((), generator=g))
    return v * gain + offset + sigma * torch.randn(v.shape, generator=g)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.T / temperature
    n = len(z1)
    sim.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return F.cross_entropy(sim, target)


def train_extractor(volumes, data_hash: str, params: SSLParams | None = None, log=None) -> Extractor:
    """Train the encoder on ``volumes`` (N, S, S, S) in [-1, 1]; returns it frozen, in eval mode, with its hash."""
    p = params or SSLParams()
    vols = torch.as_tensor(np.asarray(volumes, dtype=np.float32))
    if vols.ndim != 4 or len(vols) == 0:
        raise ValueError(f"train_extractor needs volumes (N, S, S, S) with N >= 1, got shape {tuple(vols.shape)}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: the same extractor (and SHA-256) whatever the machine's thread count
    try:
        return _train(vols, data_hash, p, log)
    finally:
        torch.set_num_threads(threads)


def _train(vols: torch.Tensor, data_hash: str, p: SSLParams, log) -> Extractor:
    g = torch.Generator().manual_seed(p.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(p.seed)
        net = SSLEncoder(p.width)
    opt = torch.optim.Adam(net.parameters(), lr=p.lr)
    t0 = time.perf_counter()
    net.train()
    for step in range(p.steps):
        v1, v2 = [], []
        for _ in range(p.batch):
            i = int(torch.randint(0, len(vols), (), generator=g))
            region = vols[i][None, None][(slice(None), slice(None)) + _box(g, vols.shape[1:], 0.5, 1.0)]
            v1.append(_view(region, g))
            v2.append(_view(region, g))
        z1 = net.head(net(torch.cat(v1)))
        z2 = net.head(net(torch.cat(v2)))
        loss = nt_xent(z1, z2, p.temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if log and (step + 1) % 50 == 0:
            log(f"[ssl] step {step + 1}/{p.steps} nt_xent={float(loss.detach()):.3f} ({time.perf_counter() - t0:.1f}s)")
    net.eval().requires_grad_(False)
    ext = Extractor(net, p, data_hash)
    ext.sha256 = hashlib.sha256(to_bytes(ext)).hexdigest()
    return ext


def to_bytes(ext: Extractor) -> bytes:
    meta = json.dumps({"format": FORMAT, "params": asdict(ext.params), "data_hash": ext.data_hash}, sort_keys=True)
    sd = {k: v.detach().contiguous().cpu() for k, v in ext.net.state_dict().items()}
    return st_save(sd, metadata={META_KEY: meta})


def from_bytes(raw: bytes, name: str = "<bytes>", expected_sha256: str = "") -> Extractor:
    """Load an extractor (no unpickling); with ``expected_sha256`` a mismatch is an error naming the file."""
    sha = hashlib.sha256(raw).hexdigest()
    if expected_sha256 and sha != expected_sha256:
        raise ValueError(f"{name}: SHA-256 {sha} does not match the expected {expected_sha256}")
    from safetensors import safe_open  # noqa: F401  (metadata is read below from the header)

    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + header_len])
    meta = json.loads(header.get("__metadata__", {}).get(META_KEY, "null") or "null")
    if not meta or meta.get("format") != FORMAT:
        raise ValueError(f"{name}: not a crfgan SSL extractor (no {META_KEY!r} metadata of format {FORMAT})")
    params = SSLParams(**meta["params"])
    net = SSLEncoder(params.width)
    net.load_state_dict(st_load(raw))
    net.eval().requires_grad_(False)
    return Extractor(net, params, meta["data_hash"], sha)


@torch.no_grad()
def extract(ext: Extractor, volumes, batch: int = 8) -> np.ndarray:
    """(N, S, S, S) in [-1, 1] → (N, 2·4w) float64: [whole volume, mean of the 8 octants], each at ``INPUT``³."""
    vols = np.asarray(volumes, dtype=np.float32)
    if vols.ndim == 3:
        vols = vols[None]
    out = []
    for i in range(0, len(vols), batch):
        x = torch.from_numpy(np.array(vols[i : i + batch]))[:, None]  # a copy: Ray hands read-only arrays
        d, h, w = x.shape[2:]
        glob = ext.net(_resize(x))
        octs = [x[:, :, a : a + d // 2, b : b + h // 2, c : c + w // 2]
                for a in (0, d // 2) for b in (0, h // 2) for c in (0, w // 2)]
        local = torch.stack([ext.net(_resize(o)) for o in octs]).mean(0)
        out.append(torch.cat([glob, local], dim=1).double().numpy())
    return np.concatenate(out)


def real_cache_name(extractor_sha: str, data_hash: str) -> str:
    return f"real-features-{extractor_sha[:16]}-{data_hash[:16]}.npz"


def extractor_name(data_hash: str, params: SSLParams) -> str:
    """File name of the extractor trained on ``data_hash`` with ``params`` (the training cache key)."""
    key = hashlib.sha256(json.dumps(asdict(params), sort_keys=True).encode()).hexdigest()[:8]
    return f"ssl-extractor-{data_hash[:16]}-{key}.safetensors"


def features_to_bytes(features: np.ndarray, extractor_sha: str, data_hash: str) -> bytes:
    import io

    buf = io.BytesIO()
    np.savez(buf, features=np.asarray(features, np.float64), extractor_sha256=np.array(extractor_sha),
             data_hash=np.array(data_hash))
    return buf.getvalue()


def features_from_bytes(raw: bytes, extractor_sha: str, data_hash: str, name: str = "<bytes>") -> np.ndarray:
    import io

    with np.load(io.BytesIO(raw), allow_pickle=False) as z:
        if str(z["extractor_sha256"]) != extractor_sha or str(z["data_hash"]) != data_hash:
            raise ValueError(f"{name}: cached real features are for another extractor or data set")
        return z["features"]
