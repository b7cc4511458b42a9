"""The training-time scores: ``quality_score`` (the headline, ``crfgan.metrics.headline``: Tune's objective) and
``fd_ssl_quick`` with the extractor and real-feature cache it needs.

``fd_ssl_quick`` (kept for continuity; blind to blur, noise and seams: see the README's degradation table):

``fd_ssl_quick`` = Fréchet distance, on the SSL extractor's features, between ``eval.quick_volumes`` whole volumes
rendered by the generator from fixed seeds and the cached features of the real training volumes (lower is
better). It uses few volumes, so its absolute value carries a large small-sample bias; with fixed seeds and one
extractor that bias is the same for every trial of a sweep, so it ranks generators; ``crfgan evaluate`` gives the
figures to report.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from crfgan.storage import exists, filesystem, join, write_bytes_atomic

from .distances import frechet_distance_stats, stats
from .features import (Extractor, SSLParams, extract, extractor_name, features_from_bytes, features_to_bytes,
                       from_bytes, real_cache_name, to_bytes, train_extractor)

QUICK_SEED = 1_000_000  # latent seeds QUICK_SEED … QUICK_SEED + n − 1: disjoint from synthesis seeds in practice


def ssl_params(cfg) -> SSLParams:
    e = cfg.eval
    return SSLParams(width=e.ssl_width, steps=e.ssl_steps, batch=e.ssl_batch, seed=e.ssl_seed)


def get_extractor(volumes_fn, data_hash: str, params: SSLParams, cache_uri: str = "", log=print,
                  endpoint: str = "", max_volumes: int = 0) -> tuple[Extractor, np.ndarray]:
    """(extractor, real features) for the data ``data_hash``: read from ``cache_uri`` when present there, else trained
    on ``volumes_fn()`` (N, S, S, S) and written there (atomically). Without ``cache_uri`` nothing is cached.
    ``max_volumes`` (the cap ``volumes_fn`` applies: ``eval.ssl_max_volumes``) is part of the cache key: an
    extractor trained on 24 volumes is not the one asked for with 4."""
    if max_volumes:
        data_hash = hashlib.sha256(f"{data_hash}|max_volumes={max_volumes}".encode()).hexdigest()[:16]
    fs = root = None
    if cache_uri:
        fs, root = filesystem(cache_uri, endpoint)
        fs.create_dir(root, recursive=True)
        path = join(root, extractor_name(data_hash, params))
        if exists(fs, path):
            with fs.open_input_stream(path, compression=None) as f:
                ext = from_bytes(f.read(), name=path)
            fpath = join(root, real_cache_name(ext.sha256, data_hash))
            if exists(fs, fpath):
                with fs.open_input_stream(fpath, compression=None) as f:
                    feats = features_from_bytes(f.read(), ext.sha256, data_hash, name=fpath)
                log(f"[quality] extractor {ext.sha256[:12]} and real features from the cache {cache_uri}")
                return ext, feats
            vols = volumes_fn()
            feats = extract(ext, vols)
            write_bytes_atomic(fs, fpath, features_to_bytes(feats, ext.sha256, data_hash))
            return ext, feats
    vols = volumes_fn()
    log(f"[quality] training the SSL extractor on {len(vols)} real volumes ({params.steps} steps, seed {params.seed})")
    ext = train_extractor(vols, data_hash, params, log=log)
    feats = extract(ext, vols)
    if fs is not None:
        write_bytes_atomic(fs, join(root, extractor_name(data_hash, params)), to_bytes(ext))
        write_bytes_atomic(fs, join(root, real_cache_name(ext.sha256, data_hash)),
                           features_to_bytes(feats, ext.sha256, data_hash))
    return ext, feats


def quick_state(ext: Extractor, real_features: np.ndarray) -> dict:
    """What a training worker needs (plain bytes and arrays: cheap to ship in the loop config)."""
    mu, sigma = stats(real_features)
    return {"extractor": to_bytes(ext), "extractor_sha256": ext.sha256, "mu": mu, "sigma": sigma}


@torch.no_grad()
def render_fixed(g, cfg, n: int, device="cpu") -> np.ndarray:
    """``n`` volumes (N, S, S, S) from the fixed latent seeds QUICK_SEED …, two at a time (bounded memory); a
    class-conditional generator renders every class in turn (the real statistics span all of them)."""
    gens = [torch.Generator().manual_seed(QUICK_SEED + i) for i in range(n)]
    z = torch.cat([torch.randn(1, cfg.model.latent_dim, generator=gg) for gg in gens]).to(device)
    was = g.training
    g.eval()
    try:
        s = cfg.synth
        vols = []
        k = cfg.model.num_classes
        for i in range(0, n, 2):
            zi = z[i : i + 2]
            cls = {"class_index": (torch.arange(i, i + len(zi)) % k).to(device)} if k else {}
            v = g.render(zi, tiled=s.tiled, slab=s.slab_embedding_slices, halo=s.halo, norm_stats=s.norm_stats, **cls)
            vols.append(v[:, 0].float().cpu().numpy())
    finally:
        g.train(was)
    return np.concatenate(vols)


@torch.no_grad()
def fd_ssl_quick(g, cfg, state: dict, device="cpu", _cache: dict = {}) -> float:  # noqa: B006 (per-process cache)
    """Render ``cfg.eval.quick_volumes`` volumes from fixed seeds and return their FD to the real statistics."""
    key = state["extractor_sha256"]
    ext = _cache.get(key)
    if ext is None:
        ext = _cache[key] = from_bytes(state["extractor"], expected_sha256=key)
    feats = extract(ext, render_fixed(g, cfg, max(2, cfg.eval.quick_volumes), device))
    mu, sigma = stats(feats)
    return frechet_distance_stats(mu, sigma, state["mu"], state["sigma"])


def headline_state(real_volumes, cfg) -> dict:
    """The real side of the headline ``quality_score`` (``crfgan.metrics.headline.reference``): plain arrays."""
    from .headline import reference

    return {"reference": reference(real_volumes), "modality": "mri" if cfg.data.modality == "mri" else "ct",
            "window": tuple(float(v) for v in cfg.data.ct_window)}


def quality_score_quick(g, cfg, state: dict, device="cpu") -> dict:
    """The headline ``quality_score`` and its components for ``eval.score_volumes`` volumes rendered from the fixed
    seeds, against the real reference in ``state`` (lower is better; see ``crfgan.metrics.headline``)."""
    from .headline import assess
    from .seam import model_seam_geometry

    vols = render_fixed(g, cfg, max(2, cfg.eval.score_volumes), device)
    m = assess(state["reference"], vols, model_seam_geometry(cfg.model), state["modality"], state["window"])
    keep = ("quality_score", "swd_fine", "intensity_shift_hu", "dup_ratio", "seam_score")
    return {k: float(m[k]) for k in keep}
