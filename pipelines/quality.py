"""The training-time quality score's inputs: the SSL extractor and the real features, prepared by the driver.

``crfgan train`` (``pipelines.train.run``) calls ``quality_state`` once before ``fit()``: it reads up to
``eval.ssl_max_volumes`` volumes of the train split from the shards, and trains the SSL extractor on them — or
finds it, with the real features, in the cache ``<train.storage_path>/quality/`` (named by the data manifest's
hash and the extractor's settings, so every run and every Tune trial on the same shards and storage shares one
extractor). The extractor's bytes (tens of KB) and the real mean/covariance travel to the workers inside the loop
config, so workers on other nodes need no access to the cache; rank 0 computes ``fd_ssl_quick`` at every
``train.val_every`` (``pipelines/train_loop.py``).
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

import numpy as np

from crfgan.storage import s3_endpoint


def cache_location(storage: str) -> tuple[str, str]:
    """(cache URI, S3 endpoint) under a storage path; an ``s3://…?endpoint_override=H:P&scheme=http`` query becomes
    the endpoint."""
    storage = str(storage)
    endpoint = ""
    if storage.startswith("s3://") and "?" in storage:
        p = urlsplit(storage)
        q = dict(parse_qsl(p.query))
        if q.get("endpoint_override"):
            endpoint = f"{q.get('scheme', 'https')}://{q['endpoint_override']}"
        storage = f"s3://{p.netloc}{p.path}"
    return storage.rstrip("/") + "/quality", endpoint


def real_volumes(cfg, data_uri: str, limit: int, why: str) -> np.ndarray:
    """Up to ``limit`` volumes of the train split (val only when train has fewer than two)."""
    from crfgan.shards import read_volumes

    out = []
    for split in ("train", "val"):
        for row in read_volumes(data_uri, split, s3_endpoint(cfg.data.s3_endpoint)):
            out.append(row["volume"])
            if len(out) >= limit:
                break
        if len(out) >= 2:
            break
    if len(out) < 2:
        raise ValueError(f"{data_uri}: {why} needs at least 2 real volumes, the shards hold {len(out)}")
    return np.stack(out)


def headline_state(cfg, data_uri: str, log=print) -> dict | None:
    """``crfgan.metrics.quick.headline_state`` from ``eval.score_volumes`` real training volumes (None when 0)."""
    if cfg.eval.score_volumes == 0:
        return None
    from crfgan.metrics.quick import headline_state as state

    real = real_volumes(cfg, data_uri, cfg.eval.score_volumes, "quality_score (set eval.score_volumes=0 to skip it)")
    log(f"[quality] quality_score: {cfg.eval.score_volumes} rendered volumes against {len(real)} real ones at every "
        f"train.val_every")
    return state(real, cfg)


def quality_state(cfg, data_uri: str, manifest: dict, storage: str, log=print) -> dict | None:
    """``crfgan.metrics.quick.quick_state`` for these shards, or None when ``eval.quick_volumes`` is 0."""
    if cfg.eval.quick_volumes == 0:
        return None
    from crfgan.metrics.quick import get_extractor, quick_state, ssl_params
    from crfgan.shards import manifest_hash

    def volumes() -> np.ndarray:
        return real_volumes(cfg, data_uri, cfg.eval.ssl_max_volumes,
                            "fd_ssl_quick (add scans or set eval.quick_volumes=0)")

    cache, endpoint = cache_location(storage)
    ext, feats = get_extractor(volumes, manifest_hash(manifest), ssl_params(cfg), cache_uri=cache, log=log,
                               max_volumes=cfg.eval.ssl_max_volumes,
                               endpoint=endpoint or cfg.data.s3_endpoint)
    log(f"[quality] fd_ssl_quick: {cfg.eval.quick_volumes} rendered volumes against {len(feats)} real ones, "
        f"extractor sha256 {ext.sha256[:12]}")
    return quick_state(ext, feats)
