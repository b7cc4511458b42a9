"""The published CRF-GAN code's training step, timed beside ours (``crfgan bench train-step --published SRC``).

SRC is a checkout of the published code (mahshid1998/CRF-GAN, fetched at bench time, never part of this project)
or a git URL or repository to clone it from (``--published https://github.com/mahshid1998/CRF-GAN``). A case runs
in a fresh process, like every train-step case: its ``models/CRF_GAN_{S}.py`` networks (G, D, E and the CRF, the
widths that code hard-codes) and the unconditional step sequence of its ``train.py`` — D on a real and a fake
sub-volume; G through D and the CRF with the CRF weight of the iteration; the CRF on a fresh fake and on E of the
whole real volume; E by the L1 between G^H(E(real sub-volume)) and that sub-volume; each with its Adam settings.
Its code calls ``.cuda()`` inside ``Discriminator.forward``; on the CPU the worker makes ``Tensor.cuda`` return the
tensor itself, in that process only, so the code runs unchanged.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from .worker import rss_bytes, worker_main

CRF_NODES = {64: 16, 128: 32, 256: 64}  # train.py's crf_num_nodes per image size


def model_file(root: Path, size: int) -> Path:
    return root / "models" / f"CRF_GAN_{size}.py"


def locate(src: str, sizes: list[int], cache: Path) -> Path:
    """A folder with the published models for every size: ``src`` itself, or a clone of it under ``cache``.
    Anything else: a one-line error (no network, no such file) before any case runs."""
    bad = [s for s in sizes if s not in CRF_NODES]
    if bad:
        raise SystemExit(f"bench train-step --published: the published code has models at {sorted(CRF_NODES)}³ only "
                         f"(asked {bad[0]}³)")
    root = Path(src)
    if not (root.is_dir() and (root / "models").is_dir()):
        root = cache / "CRF-GAN"
        if not (root / "models").is_dir():
            shutil.rmtree(root, ignore_errors=True)
            why = _clone(src, root)
            if why:
                shutil.rmtree(root, ignore_errors=True)
                raise SystemExit(f"bench train-step --published {src}: not a checkout (no models/ folder) and "
                                 f"cloning it failed ({why}); clone mahshid1998/CRF-GAN yourself and pass its folder")
    missing = [model_file(root, s) for s in sizes if not model_file(root, s).is_file()]
    if missing:
        raise SystemExit(f"bench train-step --published: {missing[0]} is missing (is {root} the published CRF-GAN?)")
    return root


def _clone(src: str, root: Path) -> str:
    """``git clone --depth 1 src root``; why it failed ("" when it did not)."""
    git = shutil.which("git")
    if git is None:
        return "no git here"
    try:
        r = subprocess.run([git, "clone", "--quiet", "--depth", "1", src, str(root)], capture_output=True, text=True,
                           timeout=180)
    except subprocess.TimeoutExpired:
        return "timed out after 180 s"
    return "" if r.returncode == 0 else (r.stderr.strip().splitlines() or [f"git exited {r.returncode}"])[-1]


def cache_dir() -> Path:
    return Path(os.environ.get("CRFGAN_CACHE", Path(tempfile.gettempdir()) / "crfgan-cache")) / "published"


def measure(case: dict) -> dict:
    import importlib

    import numpy as np
    import torch
    from torch import nn, optim

    from crfgan.memory import pin_mmap_threshold

    from .train_step import timed, warm_up_runtime

    torch.manual_seed(0)
    size, bsz, dev = case["size"], case["batch"], torch.device(case["device"])
    cuda = dev.type == "cuda"
    if not cuda:
        torch.Tensor.cuda = lambda self, *a, **k: self  # the published D calls .cuda() in forward; this process only
        pin_mmap_threshold()  # as our CPU cases do
    sys.path.insert(0, case["root"])
    m = importlib.import_module(f"models.CRF_GAN_{size}")
    real = (torch.rand(bsz, 1, size, size, size) * 2 - 1).to(dev)
    warm_up_runtime(dev)
    base, base_gpu = rss_bytes(), 0
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base_gpu = torch.cuda.memory_allocated()
    latent = 1024
    G = m.Generator(mode="train", latent_dim=latent, num_class=0).to(dev).train()
    D = m.Discriminator(num_class=0).to(dev).train()
    E = m.Encoder().to(dev).train()
    crf = m.CRF(num_nodes=CRF_NODES[size], iteration=10).to(dev).train()
    with torch.no_grad():
        crf.W.fill_(0.01)  # as our case: the CRF's pairwise work is exercised as after training starts
    betas = (0.0, 0.999)
    g_opt = optim.Adam(G.parameters(), lr=1e-4, betas=betas, eps=1e-8)
    d_opt = optim.Adam(D.parameters(), lr=4e-4, betas=betas, eps=1e-8)
    e_opt = optim.Adam(E.parameters(), lr=1e-4, betas=betas, eps=1e-8)
    c_opt = optim.Adam(crf.parameters(), lr=4e-4, betas=betas, eps=1e-8)
    bce, l1 = nn.BCEWithLogitsLoss(), nn.L1Loss()
    ones, zeros = torch.ones((bsz, 1), device=dev), torch.zeros((bsz, 1), device=dev)
    rng = np.random.default_rng(0)

    def grads(net, on):
        for p in net.parameters():
            p.requires_grad = on

    for net in (G, D, E, crf):
        grads(net, False)

    def step(it):
        grads(D, True)
        grads(E, False)
        D.zero_grad()
        crop = int(rng.integers(0, size * 7 // 8 + 1))
        real_crop = real[:, :, crop:crop + size // 8]
        d_loss = bce(D(real_crop, crop), ones)
        fake = G(torch.randn((bsz, latent), device=dev), crop_idx=crop, class_label=None)
        d_loss = d_loss + bce(D(fake, crop), zeros)
        d_loss.backward()
        d_opt.step()
        grads(D, False)
        grads(G, True)
        G.zero_grad()
        fake, a = G(torch.randn((bsz, latent), device=dev), crop_idx=crop, class_label=None, crf_need=True)
        logit_d = D(fake, crop)
        w = max(0.5 - (0.5 / 60000) * it, 0)
        g_loss = bce(crf(a, logit_d) * w + (1 - w) * logit_d, ones)
        g_loss.backward()
        g_opt.step()
        grads(G, False)
        grads(crf, True)
        crf.zero_grad()
        fake, a = G(torch.randn((bsz, latent), device=dev), crop_idx=crop, class_label=None, crf_need=True)
        c_loss = bce(crf(a, D(fake, crop)), zeros) + bce(crf(E(real), D(real_crop, crop)), ones)
        c_loss.backward()
        c_opt.step()
        grads(E, True)
        grads(crf, False)
        E.zero_grad()
        e_loss = l1(G(E(real_crop), crop_idx=None), real_crop)
        e_loss.backward()
        e_opt.step()

    nets = {"G": G, "D": D, "E": E, "crf": crf}
    return timed(step, case["iters"], dev, base, base_gpu,
                 {k: sum(p.numel() for p in v.parameters()) for k, v in nets.items()})

if __name__ == "__main__":
    worker_main(measure)
