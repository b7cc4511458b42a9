"""``crfgan preprocess``: CT/MRI collections → Parquet volume shards + manifest + errors table, on Ray Data.

    crfgan preprocess --input URI [--input URI …] --output URI --config NAME_OR_PATH [key=value …]

Stages (the pure work is ``crfgan.io.load_scan`` → ``crfgan.volume.prepare``):
1. Driver: ``pipelines.sources.discover`` lists paths and sizes (no contents) and forms units (file, DICOM folder,
   archive). Links in an input folder are followed only to files inside it; any other link becomes an error row
   (stage ``input``) without being read.
2. Ray Data ``map`` over units (one task per block, blocks of a few units): each task stages its unit (S3 download,
   safe archive extraction, DICOM series split), prepares every volume and writes one staging Parquet file per unit
   atomically; only small JSON metadata comes back to the driver. Any exception becomes an error row
   (source_uri, stage, reason) and the run goes on; a block whose worker dies ``data.task_retries`` + 1 times is
   skipped (``DataContext.max_errored_blocks``) and its units become error rows with stage ``worker``.
   ``phantom://N?size=S&seed=K`` inputs are N units generated in the worker (``crfgan.phantom``, 1 mm spacing unless
   ``spacing=MM``, modality CT); their generative factors go to ``phantom_factors.json`` next to the manifest.
3. Driver plans shards (per split, sorted by volume id, cut at ``data.shard_target_mb``); one Ray task per shard
   writes it atomically from the staging files; then ``errors.parquet`` and ``manifest.json`` (last).

Rerun with the same config over the same inputs: units with a staging file are not processed again, shards whose
planned content is unchanged are not rewritten, so the output is the same files.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import time
import traceback
import warnings

from crfgan.storage import s3_endpoint
from pipelines.args import add_config_arguments, check_output_folder
from pipelines.runtime import data_context

PHANTOM_FACTORS = "phantom_factors.json"  # sidecar of phantom:// inputs: generative factors per volume id

# pyarrow, torch (through crfgan.volume) and Ray are imported inside the functions that use them, so that
# ``crfgan preprocess --help`` starts without them.


# ---------------------------------------------------------------------------------------------------- worker side
def _dicom_volumes(folder: str, name: str, max_voxels: int):
    from crfgan.dicom import list_series, load_dicom_series
    from crfgan.io import ScanError

    series = list_series(folder)
    if not series:
        yield name, lambda: (_ for _ in ()).throw(ScanError(name, "contains no readable DICOM series"))
    for uid in sorted(series):
        label = name if len(series) == 1 else f"{name}#series={uid or '<empty>'}"
        yield label, functools.partial(load_dicom_series, folder, uid, label, max_voxels)


def _volumes_of(unit: dict, tmp: str, endpoint: str, max_voxels: int, origin: dict | None = None):
    """Yield (source_uri, loader) for every volume in a unit; loaders raise ScanError for bad volumes.

    ``origin`` is filled with {local staged or extracted path: the URI it came from}, so an error about one file
    names that file as the user knows it.
    """
    from crfgan.io import ScanError, load_scan
    from pipelines import sources

    origin = {} if origin is None else origin
    uri, kind = unit["uri"], unit["kind"]
    if kind == "phantom":  # generated here, nothing to read: crfgan.phantom
        from crfgan.phantom import phantom_scan

        yield uri, functools.partial(phantom_scan, uri)
    elif kind == "file":
        if uri.startswith("s3://"):
            yield uri, lambda: load_scan(sources.read_scan_bytes(uri, endpoint, max_voxels), name=uri,
                                         max_voxels=max_voxels)
        else:
            yield uri, functools.partial(load_scan, uri, uri, max_voxels)
    elif kind == "dicom":
        folder = uri
        if uri.startswith("s3://"):
            folder = os.path.join(tmp, "dicom")
            for f in unit["files"]:
                origin[sources.stage(f, folder, endpoint)] = f
        yield from _dicom_volumes(folder, uri, max_voxels)
    else:  # archive: refused as a whole when any member is unsafe (raises UnsafeArchive → stage "extract")
        local = sources.stage(uri, os.path.join(tmp, "download"), endpoint)
        root = os.path.join(tmp, "extract")
        files = sources.safe_extract(local, root)
        listing = [(f, os.path.getsize(f)) for f in sorted(files)]
        origin.update({f: f"{uri}!/{os.path.relpath(f, root)}" for f in files})
        for inner in sources._units_from_listing(listing, ""):
            name = f"{uri}!/{os.path.relpath(inner['uri'], root)}"
            if inner["kind"] == "file":
                yield name, functools.partial(load_scan, inner["uri"], name, max_voxels)
            elif inner["kind"] == "dicom":
                yield from _dicom_volumes(inner["uri"], name, max_voxels)
            else:
                yield name, lambda n=name: (_ for _ in ()).throw(ScanError(n, "nested archives are not unpacked"))


def _split(vid: str, source_uri: str, data) -> str:
    """``data.val_sources`` (a glob on the source URI) first, then the stable hash split."""
    import fnmatch

    from crfgan.shards import split_for

    if data.val_sources and fnmatch.fnmatchcase(source_uri, data.val_sources):
        return "val"
    return split_for(vid, data.val_fraction)


def _reason(e: BaseException) -> str:
    from crfgan.io import ScanError

    if isinstance(e, ScanError):
        return e.reason
    return f"{type(e).__name__}: {e}"


def process_unit(unit: dict, cfg, out_uri: str, endpoint: str) -> dict:
    """Prepare every volume of one unit into ``_staging/<data hash>/<key>.parquet``; returns small JSON-able metadata."""
    import pyarrow.parquet as pq

    from crfgan.shards import STAGING_DIR, exists, filesystem, join, rows_to_table, volume_id, write_table_atomic
    from crfgan.volume import prepare
    from pipelines import sources

    fs, root = filesystem(out_uri, endpoint)
    key = sources.unit_key(unit, cfg.data_hash())
    staging = join(root, STAGING_DIR, cfg.data_hash(), f"{key}.parquet")
    if exists(fs, staging):
        meta = pq.ParquetFile(staging, filesystem=fs).schema_arrow.metadata or {}
        done = json.loads(meta[b"crfgan.result"])
        return {**done, "staging": staging, "skipped": True}
    rows, metas, errors, factors = [], [], [], {}
    s = cfg.model.image_size
    origin: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="crfgan-pre-") as tmp:
        try:
            for name, loader in _volumes_of(unit, tmp, endpoint, cfg.data.max_voxels, origin):
                stage = "read"
                try:
                    scan = loader()
                    vid = volume_id(scan.array, scan.spacing)  # of the scan as read, before anything changes it
                    stage = "prepare"
                    vol, spacing = prepare(scan, cfg)  # (S, S, S) z, y, x in [-1, 1]
                    modality = cfg.data.modality if cfg.data.modality != "auto" else scan.modality
                    row = {"volume_id": vid, "source_uri": name, "modality": modality,
                           "split": _split(vid, name, cfg.data), "volume": vol,
                           "spacing": list(spacing), "original_shape": [int(v) for v in scan.meta["original_shape"]],
                           "original_spacing": [float(v) for v in scan.meta["original_spacing"]], "image_size": s,
                           "slab_depth": cfg.model.slab_depth, "num_slabs": s // cfg.model.slab_depth,
                           "config_hash": cfg.data_hash()}
                    rows.append(row)
                    if "phantom_factors" in scan.meta:  # known generative factors: to the sidecar, not the rows
                        factors[vid] = {"source_uri": name, "factors": scan.meta["phantom_factors"]}
                    metas.append({"volume_id": vid, "source_uri": name, "split": row["split"], "modality": modality,
                                  "spacing": row["spacing"], "original_shape": row["original_shape"],
                                  "nbytes": int(vol.size * 2), "row": len(rows) - 1})
                except Exception as e:  # noqa: BLE001 — one bad volume never stops the unit
                    # the one file at fault when the volume is a DICOM series and the error names one
                    bad = getattr(e, "file", "")
                    errors.append({"source_uri": origin.get(bad, bad) or name, "stage": stage, "reason": _reason(e)})
        except sources.UnsafeArchive as e:
            errors.append({"source_uri": unit["uri"], "stage": "extract", "reason": f"archive refused: {e}"})
        except Exception as e:  # noqa: BLE001 — staging / listing failed (network, permissions): retried on the next run
            errors.append({"source_uri": unit["uri"], "stage": "fetch", "reason": _reason(e)})
    result = {"unit": unit["uri"], "bytes_in": unit["size"], "volumes": metas, "errors": errors}
    if factors:
        result["phantom_factors"] = factors
    table = rows_to_table(rows, s)
    if not any(e["stage"] == "fetch" for e in errors):
        table = table.replace_schema_metadata({"crfgan.result": json.dumps(result)})
        write_table_atomic(fs, staging, table)
    return {**result, "staging": staging, "skipped": False}


@functools.lru_cache(maxsize=4)
def _config(cfg_json: str):
    from crfgan.config import config_from_dict

    return config_from_dict(json.loads(cfg_json))  # 12 ms to validate a tree: once per worker, not once per unit


def _map_unit(row: dict, cfg_json: str, out_uri: str, endpoint: str, umask: int | None = None) -> dict:
    if umask is not None:  # the driver user's umask: a Ray worker keeps the one of the process that started Ray
        os.umask(umask)
    unit = json.loads(row["unit"])
    if unit["kind"] == "refused":  # sources.discover: an input entry that is not read (a link that leaves the input …)
        res = {"unit": unit["uri"], "bytes_in": 0, "volumes": [], "skipped": False, "staging": "",
               "errors": [{"source_uri": unit["uri"], "stage": "input", "reason": unit["reason"]}]}
        return {"result": json.dumps(res)}
    try:
        res = process_unit(unit, _config(cfg_json), out_uri, endpoint)
    except Exception as e:  # noqa: BLE001 — writing the staging file failed: report it, keep the run going
        res = {"unit": unit["uri"], "bytes_in": unit["size"], "volumes": [], "skipped": False, "staging": "",
               "errors": [{"source_uri": unit["uri"], "stage": "write", "reason": _reason(e)}]}
        traceback.print_exc()
    return {"result": json.dumps(res)}


def _write_shard(plan: dict, out_uri: str, endpoint: str, umask: int | None = None) -> dict:
    from crfgan.shards import filesystem, write_shard

    if umask is not None:
        os.umask(umask)
    fs, root = filesystem(out_uri, endpoint)
    return write_shard(fs, root, plan)


# ---------------------------------------------------------------------------------------------------- driver side
def run(inputs: list[str], output: str, cfg) -> dict:
    """The pipeline without argument parsing; returns the manifest dict."""
    from pipelines import cluster, sources
    from pipelines.runtime import ensure_ray

    sources.check_inputs(inputs, cfg)  # a bad phantom:// query or a missing local input fails here, before Ray starts
    check_output_folder(output, "--output")
    # a relative output means the caller's working directory, not that of a Ray worker
    output = output if "://" in output else os.path.abspath(output)
    ray = ensure_ray()
    # multi-node: local inputs and outputs must be seen by every node (checked before any work starts)
    cluster.require_shared(ray, cluster.preprocess_paths(inputs, output), "preprocess", {"CPU": 1})
    with data_context(
        # Ray Data reserves half of the CPUs per operator by default: on 2 CPUs a single map ran 1 task at a time
        # (measured: 8 × 1 s tasks took 8.3 s, 4.3 s without the reservation).
        op_resource_reservation_enabled=False,
    ):
        return _run(ray, inputs, output, cfg)


def _run(ray, inputs: list[str], output: str, cfg) -> dict:
    import crfgan
    from crfgan.shards import ERRORS, STAGING_DIR, ensure_val, exists, filesystem, join, plan_shards, read_manifest, \
        write_errors, write_manifest
    from crfgan.storage import current_umask
    from pipelines import sources

    t0 = time.time()
    endpoint = s3_endpoint(cfg.data.s3_endpoint)
    units = sources.discover(inputs, endpoint)
    if not units:
        raise FileNotFoundError(f"no scans found in {inputs}")
    fs, root = filesystem(output, endpoint)
    n_blocks = min(len(units), 1000)
    umask = current_umask()
    fn = functools.partial(_map_unit, cfg_json=json.dumps(cfg.to_dict(), sort_keys=True), out_uri=output,
                           endpoint=endpoint, umask=umask)
    # A dataset copies the DataContext when it is created: the setting must be in place before from_items.
    with data_context(max_errored_blocks=n_blocks):  # a crashed block becomes error rows below, the run goes on
        ds = ray.data.from_items([{"unit": json.dumps(u)} for u in units], override_num_blocks=n_blocks)
        with warnings.catch_warnings():
            # max_retries: Ray Data retries a task whose worker died forever by default, so one input that crashes
            # its reader natively (or is OOM-killed every time) would hang the run. Ray 2.60 has no named map
            # parameter for it yet (ray_remote_args are deprecated for 2.64): revisit when upgrading.
            warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
            mapped = ds.map(fn, max_retries=cfg.data.task_retries)
        results = [json.loads(r["result"]) for r in mapped.iter_rows()]

    seen = {r["unit"] for r in results}
    errors = [e for r in results for e in r["errors"]]
    errors += [{"source_uri": u["uri"], "stage": "worker", "reason": "the Ray task processing it failed"}
               for u in units if u["uri"] not in seen]
    metas = [{**m, "staging": r["staging"]} for r in results for m in r["volumes"]]
    metas = ensure_val(metas, cfg.data.val_fraction)
    plans = plan_shards(metas, cfg.data.shard_target_mb)

    try:
        prev_manifest = read_manifest(output, endpoint)
        old = {s["path"]: s for s in prev_manifest["shards"]} \
            if prev_manifest.get("config_hash") == cfg.data_hash() else {}
    except (FileNotFoundError, OSError, KeyError, ValueError):
        old = {}
    shards, todo = [], []
    for p in plans:
        prev = old.get(p["name"])
        if prev and prev["volume_ids"] == p["volume_ids"] and exists(fs, join(root, p["name"])):
            shards.append(prev)
        else:
            todo.append(p)
    if todo:
        # A handful of plain tasks, one per shard (atomic, idempotent writes: retrying is safe); a Ray Data
        # dataset's start-up buys nothing for so few items.
        task = ray.remote(num_cpus=1, max_retries=cfg.data.task_retries)(_write_shard)
        shards += ray.get([task.remote(p, output, endpoint, umask) for p in todo])
    shards.sort(key=lambda s: s["path"])
    write_errors(fs, root, errors)

    counts: dict = {"split": {}, "modality": {}}
    for m in metas:
        counts["split"][m["split"]] = counts["split"].get(m["split"], 0) + 1
        counts["modality"][m["modality"]] = counts["modality"].get(m["modality"], 0) + 1
    spacings = [m["spacing"] for m in metas]
    s = cfg.model.image_size
    manifest = {
        "volumes_ok": len(metas), "volumes_failed": len(errors), "inputs": len(units),
        "units_skipped": sum(r["skipped"] for r in results),
        "errors_path": join(output.rstrip("/"), ERRORS), "shards": shards, "config_hash": cfg.data_hash(),
        "config": cfg.to_dict(), "package_version": crfgan.__version__, "counts": counts,
        "volume_shape": [s, s, s], "axis_order": "zyx", "dtype": "float16",
        "image_size": s, "slab_depth": cfg.model.slab_depth,
        "spacing_mm": {"min": [min(v[i] for v in spacings) for i in range(3)] if spacings else None,
                       "max": [max(v[i] for v in spacings) for i in range(3)] if spacings else None},
        "bytes_in": sum(u["size"] for u in units), "bytes_out": sum(sh["bytes"] for sh in shards),
        "staging_bytes": _tree_bytes(fs, join(root, STAGING_DIR, cfg.data_hash())),
        "staging_kept": cfg.data.keep_staging, "elapsed_s": round(time.time() - t0, 3),
    }
    manifest["phantom_factors_path"] = _write_phantom_factors(fs, root, output, results, metas)
    write_manifest(fs, root, manifest)
    _drop_stale_shards(fs, root, {sh["path"] for sh in shards})
    _clean_staging(fs, root, cfg.data_hash() if cfg.data.keep_staging else None)
    return manifest


def _write_phantom_factors(fs, root: str, output: str, results: list[dict], metas: list[dict]) -> str | None:
    """``phantom_factors.json``: the generative factors of every phantom volume written (by volume id, with its
    source URI and split); removed when this run has none, so a stale sidecar never describes other shards."""
    from pyarrow.fs import FileType

    from crfgan.shards import join, write_bytes_atomic

    split = {m["volume_id"]: m["split"] for m in metas}
    rows = [{"volume_id": vid, "split": split[vid], **f} for r in results
            for vid, f in r.get("phantom_factors", {}).items() if vid in split]
    path = join(root, PHANTOM_FACTORS)
    if not rows:
        if fs.get_file_info(path).type == FileType.File:
            fs.delete_file(path)
        return None
    rows.sort(key=lambda r: r["source_uri"])
    write_bytes_atomic(fs, path, json.dumps({"volumes": rows}, indent=1).encode())
    return join(output.rstrip("/"), PHANTOM_FACTORS)


def _tree_bytes(fs, path: str) -> int:
    from pyarrow.fs import FileSelector, FileType

    infos = fs.get_file_info(FileSelector(path, recursive=True, allow_not_found=True))
    return sum(i.size or 0 for i in infos if i.type == FileType.File)


def _clean_staging(fs, root: str, keep_hash: str | None) -> None:
    """Delete ``_staging/`` after a successful run, or, when it is kept, the folders of other data hashes."""
    from pyarrow.fs import FileSelector, FileType

    from crfgan.shards import STAGING_DIR, join

    base = join(root, STAGING_DIR)
    if keep_hash is None:
        if fs.get_file_info(base).type == FileType.Directory:
            fs.delete_dir(base)
        return
    for info in fs.get_file_info(FileSelector(base, allow_not_found=True)):
        if info.base_name == keep_hash:
            continue
        if info.type == FileType.Directory:
            fs.delete_dir(info.path)
        else:
            fs.delete_file(info.path)


def _drop_stale_shards(fs, root: str, keep: set[str]) -> None:
    """Delete shards of older plans under this output (local or S3) that the new manifest no longer lists."""
    from pyarrow.fs import FileSelector, FileType

    from crfgan.shards import SHARD_DIR, join

    for info in fs.get_file_info(FileSelector(join(root, SHARD_DIR), allow_not_found=True)):
        if info.type == FileType.File and info.base_name.endswith(".parquet") \
                and f"{SHARD_DIR}/{info.base_name}" not in keep:
            fs.delete_file(info.path)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", action="append", required=True, metavar="URI",
                        help="folder, glob, file, zip/tar archive, s3://bucket/prefix, or phantom://N?size=S&seed=K "
                             "(N procedural CT phantoms; generative factors in phantom_factors.json); repeatable")
    parser.add_argument("--output", required=True, metavar="URI", help="output folder or s3://bucket/prefix")
    add_config_arguments(parser)  # the same default preset as crfgan train, so their shards and model agree


def main(args: argparse.Namespace) -> int:
    from crfgan.config import ConfigError, load_config

    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"preprocess: {e}", file=sys.stderr)
        return 2
    try:
        m = run(args.input, args.output, cfg)
    except (FileNotFoundError, ValueError) as e:  # InputError, an unusable --output: one line
        print(f"preprocess: {e}", file=sys.stderr)
        return 2
    total = m["volumes_ok"] + m["volumes_failed"]
    frac = m["volumes_failed"] / max(1, total)
    print(f"preprocess: {m['volumes_ok']} volumes in {len(m['shards'])} shards ({m['counts']['split']}), "
          f"{m['volumes_failed']} failed, {m['elapsed_s']:.1f}s → {args.output}")
    if frac > cfg.data.max_error_fraction:
        print(f"preprocess: {m['volumes_failed']} of {total} inputs failed ({frac:.0%} > data.max_error_fraction="
              f"{cfg.data.max_error_fraction:.0%}); see the errors table at {m['errors_path']}", file=sys.stderr)
        return 1
    if m["volumes_failed"]:
        print(f"preprocess: errors table at {m['errors_path']}")
    return 0

