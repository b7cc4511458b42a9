"""``crfgan evaluate``: synthetic volume sets against a real set — metrics.json and a report folder.

    crfgan evaluate --real SHARDS_OR_NIFTI --synthetic URI [--synthetic URI …] --report DIR [--model models:/NAME@ALIAS]

Each URI is a shard dataset from ``crfgan preprocess`` or a folder / ``s3://`` prefix of NIfTI volumes; all sets are
put on the model's [-1, 1] scale (``crfgan.metrics.sets``) with the data config recorded with the model (``--model``),
else the real shards' manifest, else ``--config``. The SSL extractor is trained on the real set's train split (or
on the whole real set when it is a NIfTI folder), or read from the cache (``--cache``) by the real data's hash. The
default cache is the one ``crfgan train`` fills, ``<train.storage_path>/quality`` (storage path from ``--model``'s
config, else the config), so evaluating against the shards a model was trained on reuses its extractor.
Per-chunk statistics (features, spectra, histograms, seam profiles, nearest-training distances) and each set's
pairwise MS-SSIM run as Ray tasks in parallel; the driver combines them (``crfgan.metrics.compute``).
Several ``--synthetic`` sets give one table with ratios against the first. With ``--model`` the first set's metrics and
the report are logged to that model version's MLflow run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from crfgan.storage import s3_endpoint
from pipelines.args import add_config_arguments, check_output_folder

CHUNK = 8  # volumes per Ray task


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--real", required=True, metavar="URI", help="real volumes: shard dataset or NIfTI folder/s3 prefix")
    p.add_argument("--synthetic", required=True, action="append", metavar="URI",
                   help="synthetic volumes (repeat for comparison mode; ratios are against the first)")
    p.add_argument("--name", action="append", default=[], metavar="NAME",
                   help="display name of each --synthetic set, in order (default: the folder name)")
    p.add_argument("--report", required=True, metavar="DIR", help="output folder: index.html, report.md, metrics.json, PNGs")
    p.add_argument("--model", default=None, metavar="models:/NAME@ALIAS",
                   help="the registered generator evaluated: its data config is used and results are logged to its run")
    p.add_argument("--cache", default="", metavar="URI",
                   help="SSL extractor and real-feature cache (folder or s3://; default: the one crfgan train "
                   "fills, <train.storage_path>/quality)")
    p.add_argument("--max-volumes", type=int, default=0, help="use at most this many volumes per set (0: all)")
    add_config_arguments(p, default=None)


# ------------------------------------------------------------------------------------------------ helpers
def _model_config(model_uri: str, tracking_uri: str):
    """(config, run_id) of a registered generator ``models:/name@alias`` or ``models:/name/version``."""
    import json

    import mlflow
    from mlflow.tracking import MlflowClient

    from crfgan.config import config_from_dict

    if not model_uri.startswith("models:/"):
        raise ValueError(f"--model must look like models:/NAME@ALIAS or models:/NAME/VERSION, got {model_uri!r}")
    spec = model_uri[len("models:/"):]
    client = MlflowClient(tracking_uri)
    if "@" in spec:
        name, alias = spec.split("@", 1)
        mv = client.get_model_version_by_alias(name, alias)
    else:
        name, version = spec.rsplit("/", 1)
        mv = client.get_model_version(name, version)
    mlflow.set_tracking_uri(tracking_uri)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri))
    found = sorted(local.rglob("config.json"))
    if not found:
        raise ValueError(f"{model_uri}: the model holds no config.json")
    return config_from_dict(json.loads(found[0].read_text())), mv.run_id


def _chunks(n: int, size: int = CHUNK):
    return [(i, min(i + size, n)) for i in range(0, n, size)]


def run(cfg, real_uri: str, synthetic: list[tuple[str, str]], report: str, cache: str, model: str | None = None,
        max_volumes: int = 0, log=print) -> dict:
    """The job without argument parsing; returns the metrics.json content."""
    from crfgan.metrics.sets import load_set

    check_output_folder(report, "--report")  # before any loading or Ray
    t0 = time.perf_counter()
    run_id = tracking = None
    if model:
        from pipelines.tracking import NO_STORE, lookup_tracking_uri

        tracking = lookup_tracking_uri(cfg)
        if tracking is None:
            raise ValueError(f"--model {model}: {NO_STORE}")
        cfg, run_id = _model_config(model, tracking)
        log(f"[evaluate] data config and seam geometry from {model} (run {run_id})")
    real = load_set(real_uri, "real", cfg, max_volumes=max_volumes, log=log)
    sets = [load_set(uri, name, cfg, max_volumes=max_volumes, log=log) for name, uri in synthetic]
    endpoint = ""
    if not cache:  # training's cache (pipelines.quality): the same key, so its extractor is found, not retrained
        from pipelines.quality import cache_location
        from pipelines.runtime import storage_uri

        cache, endpoint = cache_location(storage_uri(cfg.train.storage_path))
    return evaluate_sets(cfg, real, sets, report, cache, run_id=run_id, tracking=tracking, log=log, t0=t0,
                         cache_endpoint=endpoint or s3_endpoint(cfg.data.s3_endpoint))


def evaluate_sets(cfg, real, sets: list, report: str, cache: str, run_id: str | None = None,
                  tracking: str | None = None, log=print, t0: float | None = None, cache_endpoint: str = "") -> dict:
    """Evaluate loaded ``VolumeSet``s (``crfgan.metrics.sets``) against ``real``; writes the report folder."""
    from crfgan.metrics import compute
    from crfgan.metrics.features import to_bytes
    from crfgan.metrics.quick import get_extractor, ssl_params
    from crfgan.metrics.report import write_report
    from crfgan.metrics.seam import model_seam_geometry, seam_boundaries
    from pipelines.runtime import ensure_ray
    from pipelines.tracking import scrub_uri

    t0 = t0 or time.perf_counter()
    s = real.volumes.shape[1]
    for st in sets:
        if st.volumes.shape[1:] != real.volumes.shape[1:]:
            raise ValueError(f"{st.uri}: volumes are {st.volumes.shape[1:]}, the real set's {real.volumes.shape[1:]}; "
                             "evaluate sets of one size")
    train = real.train if real.train is not None and len(real.train) >= 2 else real.volumes
    ext, _ = get_extractor(lambda: train[: cfg.eval.ssl_max_volumes], real.data_hash, ssl_params(cfg), cache, log=log,
                           max_volumes=cfg.eval.ssl_max_volumes, endpoint=cache_endpoint)
    if cfg.model.image_size != s:
        cfg.model.image_size = s  # the sets decide the size; seam geometry follows from S
        cfg.model.embedding_size = 0
    geometry = model_seam_geometry(cfg.model)
    seams, refs = seam_boundaries(s, *geometry)
    notes = []
    if not seams or not refs:
        geometry = None
        notes.append(f"seam score skipped: at {s}³ every boundary of the sub-volume phase is a border (needs 64³+)")
    med3d_note = _med3d_note(cfg)
    if med3d_note:
        log(f"[evaluate] {med3d_note}")
        notes.append(med3d_note)

    ray = ensure_ray()
    chunk_task = ray.remote(num_cpus=1)(_chunk_task)
    div_task = ray.remote(num_cpus=1)(compute.diversity)
    ext_ref, train_ref = ray.put(to_bytes(ext)), ray.put(train)
    all_sets = [real, *sets]
    futures = {}
    for st in all_sets:
        ref = ray.put(st.volumes)
        loo = st is real  # a real volume's nearest *other* training volume (itself excluded) is the reference
        futures[st.name] = ([chunk_task.remote(ref, a, b, ext_ref, train_ref, loo) for a, b in _chunks(len(st.volumes))],
                            div_task.remote(ref))
    stats, ms = {}, {}
    for name, (chunk_refs, div_ref) in futures.items():
        stats[name] = compute.merge(ray.get(chunk_refs))
        ms[name] = ray.get(div_ref)

    metrics = {st.name: compute.compare(stats["real"], stats[st.name], real.modality, real.ct_window, ms["real"],
                                        ms[st.name], geometry) for st in sets}
    med3d = _med3d_metrics(cfg, real, sets, log)
    for name, extra in med3d.items():
        metrics[name].update(extra)
    notes += compute.seam_notes(metrics, geometry)
    ratios = None
    if len(sets) > 1:
        ratios = compute.versus_first(metrics)
    result = {"real": {"uri": scrub_uri(real.uri), "n": len(real.volumes), "modality": real.modality,
                       "data_hash": real.data_hash, "size": s, "errors": real.errors},  # files skipped, and why
              "synthetic": {st.name: {"uri": scrub_uri(st.uri), "n": len(st.volumes), "errors": st.errors} for st in sets},
              "extractor": {"sha256": ext.sha256, "data_hash": ext.data_hash, "params": vars(ext.params)},
              "seam_geometry": {"border_period": geometry[0], "grid": geometry[1]} if geometry else None,
              "metrics": metrics, "ratios": ratios, "notes": notes, "seconds": round(time.perf_counter() - t0, 1)}
    vols = {"real": real.volumes, **{st.name: st.volumes for st in sets}}
    files = write_report(report, result, vols, stats, real.modality, real.ct_window, seams if geometry else [])
    if run_id:
        _log_mlflow(tracking, run_id, metrics[sets[0].name], report)
        log(f"[evaluate] logged to MLflow run {run_id}")
    log(f"[evaluate] {len(sets)} synthetic set(s) against {len(real.volumes)} real volumes in {result['seconds']} s → "
        f"{files[0]}")
    return result


def _chunk_task(vols, a: int, b: int, ext_bytes: bytes, train, leave_one_out: bool):
    from crfgan.metrics.compute import chunk_stats
    from crfgan.metrics.features import from_bytes

    return chunk_stats(vols[a:b], from_bytes(ext_bytes), train, leave_one_out=leave_one_out)


def _med3d_note(cfg) -> str:
    if not cfg.eval.med3d_weights:
        return "fid_med3d/mmd_med3d skipped: no MedicalNet ResNet-50 weights given (eval.med3d_weights, eval.med3d_sha256)"
    return ""


def _med3d_metrics(cfg, real, sets, log) -> dict:
    if not cfg.eval.med3d_weights:
        return {}
    from crfgan.metrics import distances as D
    from crfgan.metrics.med3d import load_med3d, med3d_features

    net = load_med3d(cfg.eval.med3d_weights, cfg.eval.med3d_sha256)
    fr = med3d_features(net, real.volumes)
    out = {}
    for st in sets:
        fs = med3d_features(net, st.volumes)
        out[st.name] = {"fid_med3d": D.frechet_distance(fr, fs), "mmd_med3d": D.mmd_gaussian(fr, fs)}
    log("[evaluate] fid_med3d/mmd_med3d computed with the given MedicalNet weights")
    return out


def _log_mlflow(tracking: str, run_id: str, metrics: dict, report: str) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking)
    for k, v in metrics.items():
        if isinstance(v, (int, float)) and np.isfinite(v):
            client.log_metric(run_id, f"eval.{k}", float(v))
    client.log_artifacts(run_id, report, artifact_path="evaluation")


def default_config(real_uri: str, config: str | None, overrides, endpoint: str = ""):
    """``--config`` when given; else the real shard dataset's own config (its size, window and seam geometry); else
    the defaults with the size taken from the real set when it is loaded."""
    from crfgan.config import apply_overrides, config_from_dict, load_config
    from crfgan.metrics.sets import is_shards
    from crfgan.shards import read_manifest

    if config:
        return load_config(config, overrides)
    if is_shards(real_uri, endpoint):
        manifest = read_manifest(real_uri, endpoint)
        if isinstance(manifest.get("config"), dict):
            return apply_overrides(config_from_dict(manifest["config"]), overrides)
    return load_config("ct64", overrides)


def main(args: argparse.Namespace) -> int:
    try:
        cfg = default_config(args.real, args.config, args.overrides, s3_endpoint())
    except (FileNotFoundError, ValueError, OSError) as e:
        print(f"evaluate: {e}", file=sys.stderr)
        return 2
    if args.name and len(args.name) != len(args.synthetic):
        print(f"evaluate: {len(args.name)} --name for {len(args.synthetic)} --synthetic sets", file=sys.stderr)
        return 2
    names = args.name or [Path(u.rstrip("/")).name or f"synthetic{i}" for i, u in enumerate(args.synthetic)]
    if len(set(names)) != len(names) or "real" in names:
        names = [f"{i}:{n}" for i, n in enumerate(names)]
    try:
        result = run(cfg, args.real, list(zip(names, args.synthetic)), args.report, args.cache, args.model,
                     args.max_volumes)
    except (FileNotFoundError, ValueError) as e:
        print(f"evaluate: {e}", file=sys.stderr)
        return 2
    from crfgan.metrics.report import table

    header, rows = table(result["metrics"], result["ratios"])
    print(" | ".join(header))
    for r in rows:
        print(" | ".join(r))
    return 0 if os.path.isfile(os.path.join(args.report, "index.html")) else 1

