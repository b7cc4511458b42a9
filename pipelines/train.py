"""``crfgan train``: CRF-GAN / HA-GAN training on Ray Train v2 (DDP, checkpoints, fault tolerance, MLflow).

    crfgan train --data SHARDS_URI --config tiny [--run-name NAME] [--storage PATH_OR_S3] [key=value ...]
    crfgan train --data SHARDS_URI --config tiny --local        # one process, crfgan.trainer.train_local
    ray job submit --address http://HEAD:8265 --working-dir . -- crfgan train --data s3://… --config ct128

Joins ``RAY_ADDRESS`` (set by ``ray job submit``) or starts a local Ray. The run lives at
``<storage>/<run name>`` (``train.storage_path`` / ``train.run_name`` unless given here); rerunning with the same
storage and name resumes from its latest checkpoint, and ``FailureConfig(train.max_failures)`` restarts the
worker group from it after a worker dies. S3 storage: ``s3://bucket/prefix?endpoint_override=HOST:PORT&scheme=http``
for S3-compatible endpoints. The per-worker loop is ``pipelines/train_loop.py``; MLflow glue ``pipelines/tracking.py``.

Data order: the train split's item list (one item per volume) is shuffled anew every epoch (Ray Data
``random_shuffle`` on the items, reseeded per execution from ``train.seed``), before any volume is read.
Classes (``model.num_classes`` > 0): the driver reads ``train.class_column`` of the train shards, fills
``model.class_names`` (sorted distinct values unless given) and attaches each volume's class index to its item.
``--local`` and Ray Train write different checkpoint layouts in ``<storage>/<run name>``: each refuses the other's
run folder with a message instead of silently starting over.
"""

from __future__ import annotations

import argparse
import functools
import os
import random
import sys
from pathlib import Path

from crfgan.storage import s3_endpoint
from pipelines.args import add_config_arguments, check_output_folder, config_from_args
from pipelines.runtime import ensure_ray, storage_uri


EPOCH_MIN_ROWS = 256  # rows per Ray Data epoch of the train split (the item list repeats when it is shorter)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, metavar="URI", help="output of crfgan preprocess (folder or s3://bucket/prefix)")
    p.add_argument("--local", action="store_true", help="train in this process (no Ray) with crfgan.trainer.train_local, "
                   "on the CPU unless train.use_gpu=true; it refuses a Ray Train run folder, and Ray refuses its")
    p.add_argument("--run-name", default=None, help="Ray Train run name (default: train.run_name); same name = resume")
    p.add_argument("--storage", default=None, metavar="PATH_OR_S3", help="checkpoint storage (default: train.storage_path)")
    p.add_argument("--no-mlflow", action="store_true", help="skip MLflow tracking and model registration")
    add_config_arguments(p)


def _apply(cfg, args):
    if args.run_name:
        cfg.train.run_name = args.run_name
    if args.storage:
        cfg.train.storage_path = args.storage
    return cfg


def torch_backend(cfg) -> str:
    """NCCL between GPU workers, gloo between CPU workers."""
    return "nccl" if cfg.train.use_gpu else "gloo"


def class_values(cfg, data_uri: str, manifest: dict, split: str = "train") -> dict[tuple[str, int], str]:
    """``{(shard path, row group): value of train.class_column}`` for one split (reads only that column)."""
    import pyarrow.parquet as pq

    from crfgan.shards import filesystem

    col, out = cfg.train.class_column, {}
    for sh in manifest["shards"]:
        if sh["split"] != split:
            continue
        fs, path = filesystem(f"{data_uri.rstrip('/')}/{sh['path']}", cfg.data.s3_endpoint)
        pf = pq.ParquetFile(path, filesystem=fs)
        if col not in pf.schema_arrow.names:
            raise ValueError(f"{sh['path']}: no column {col!r} for train.class_column "
                             f"(columns: {', '.join(pf.schema_arrow.names)})")
        for g in range(pf.num_row_groups):
            out[(sh["path"], g)] = str(pf.read_row_group(g, columns=[col]).column(col)[0].as_py())
    return out


def _datasets(cfg, data_uri: str, manifest: dict, data_cpus: float):
    """Ray Datasets over the shards (only the ``volume`` column is read, plus the class index when conditional);
    val falls back to train when empty. Fills ``cfg.model.class_names`` when the model is class-conditional."""
    import ray.data

    from crfgan.trainer import assign_classes

    endpoint = s3_endpoint(cfg.data.s3_endpoint)
    s = cfg.model.image_size
    check_shards_match(cfg, data_uri, manifest)

    labels: dict = {}
    if cfg.model.num_classes:
        values = class_values(cfg, data_uri, manifest)
        idx = assign_classes(cfg, values.values(), source=f"{data_uri} (train split)")
        labels = dict(zip(values, (int(i) for i in idx)))

    def read(split: str, min_rows: int = 1):
        # One item per volume (= one Parquet row group), read by zero-CPU tasks: streaming, and no CPU-bound
        # listing task that could wait forever while the training workers hold every CPU of a small machine.
        items = [{"shard": f"{data_uri.rstrip('/')}/{sh['path']}", "row_group": i,
                  **({"label": labels[(sh["path"], i)]} if labels and split == "train" else {})}
                 for sh in manifest["shards"] if sh["split"] == split for i in range(sh["volumes"])]
        if not items:
            return None
        # A Ray Data epoch costs a fixed start-up (and a barrier between workers); with few volumes, one epoch
        # walks the (tiny) item list several times in a new seeded order each pass, so the start-up is amortised.
        rng = random.Random(cfg.train.seed)
        passes = [rng.sample(items, len(items)) for _ in range(max(1, -(-min_rows // len(items))))]
        items = [it for p in passes for it in p]
        per_block = int(min(16, max(1, 64 * 2**20 // (2 * s**3))))  # ≈ 64 MiB of float16 volumes per read task
        ds = ray.data.from_items(items, override_num_blocks=max(1, -(-len(items) // per_block)))
        if split == "train":  # a new item order every epoch (every execution), seeded; zero-CPU shuffle tasks
            ds = ds.random_shuffle(seed=ray.data.RandomSeedConfig(cfg.train.seed, reseed_after_execution=True),
                                   num_cpus=0)
        return ds.map(functools.partial(_read_volume, endpoint=endpoint), num_cpus=data_cpus)

    from pipelines.runtime import data_context

    # no Ray Data progress bars for the training input: an endless stream of epochs read inside Ray Train's split
    # coordinator, whose bars reach the console as hundreds of raw log lines; the trainer reports its own progress.
    # Rows in the seeded item order (read tasks finish out of order otherwise): a rerun with the same seed sees the
    # same volumes in the same order when the datasets are iterated directly (Ray Train's ingest options are not
    # changed: setting them printed a Ray deprecation warning in the demo)
    with data_context(enable_progress_bars=False, execution_options=ordered_execution()):
        train = read("train", min_rows=EPOCH_MIN_ROWS)
        if train is None:
            raise ValueError(f"{data_uri}: the manifest lists no train shards (splits: {manifest.get('counts', {})})")
        val = read("val")
        if val is None:
            print("[train] warning: no val split in the shards; val_l1 is computed on train volumes", flush=True)
            val = read("train")
    return {"train": train, "val": val}


def check_shards_match(cfg, data_uri: str, manifest: dict) -> None:
    """Shards must hold cubes of ``model.image_size``; a mismatch is a one-line ``ConfigError`` saying what fixes it."""
    from crfgan.config import ConfigError

    held, s = manifest.get("image_size"), cfg.model.image_size
    if held in (None, s):
        return
    made_by = (manifest.get("config") or {}).get("name")
    fix = f"--config {made_by}" if made_by and made_by != cfg.name else f"model.image_size={held}"
    raise ConfigError(f"{data_uri} holds {held}³ volumes (preprocessed with --config {made_by or '?'}) but "
                      f"--config {cfg.name} trains at model.image_size={s}: train with {fix}, or preprocess again "
                      f"with --config {cfg.name}")


def _read_volume(item: dict, endpoint: str = "") -> dict:
    import pyarrow.parquet as pq

    from crfgan.shards import filesystem

    fs, path = filesystem(item["shard"], endpoint)
    t = pq.ParquetFile(path, filesystem=fs).read_row_group(item["row_group"], columns=["volume"])
    row = {"volume": t.column("volume").combine_chunks().to_numpy_ndarray()[0]}  # (S, S, S) float16
    if "label" in item:
        row["label"] = item["label"]
    return row


def refuse_local_run(storage: str, run_name: str) -> None:
    """A ``--local`` run folder (checkpoint_NNNNNN/) is not resumable by Ray Train: refuse instead of starting over."""
    from crfgan.trainer import checkpoints

    if "://" in storage:
        return
    found = checkpoints(Path(storage) / run_name)
    if found:
        raise ValueError(f"{Path(storage) / run_name} holds checkpoints of a --local run ({found[-1].name}); Ray Train "
                         "cannot resume them. Continue with --local, or pick another --run-name or --storage")


def _checked_data(cfg, data_uri: str) -> tuple[str, dict]:
    """The output folder, the run name and ``--data`` checked before Ray starts; (absolute data URI, manifest)."""
    from crfgan.shards import read_manifest

    check_output_folder(cfg.train.storage_path, "--storage")
    refuse_local_run(storage_uri(cfg.train.storage_path), cfg.train.run_name)
    data_uri = data_uri if "://" in data_uri else os.path.abspath(data_uri)  # read by Ray tasks in other directories
    manifest = read_manifest(data_uri, cfg.data.s3_endpoint)  # a missing or wrong --data: said before Ray starts
    check_shards_match(cfg, data_uri, manifest)
    if not any(sh.get("split") == "train" for sh in manifest.get("shards", [])):
        raise ValueError(f"{data_uri}: the manifest lists no train shards (splits: {manifest.get('counts', {})})")
    return data_uri, manifest


def _trainer(cfg, loop_config: dict, storage, datasets: dict, callbacks):
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    t = cfg.train
    resources = {"CPU": t.cpus_per_worker, **({"GPU": 1} if t.use_gpu else {})}
    return TorchTrainer(
        _loop(),
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend=torch_backend(cfg)),
        scaling_config=ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu, resources_per_worker=resources),
        run_config=RunConfig(name=t.run_name, storage_path=storage,
                             failure_config=FailureConfig(max_failures=t.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=t.keep_checkpoints),
                             callbacks=list(callbacks or [])),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=["train"]),  # val: rank 0 streams its first volumes
    )


def ordered_execution(options=None):
    """A copy of Ray Data's execution options (the current context's by default) with ``preserve_order`` on."""
    import copy

    import ray.data

    opts = copy.deepcopy(options if options is not None else ray.data.DataContext.get_current().execution_options)
    opts.preserve_order = True
    return opts


def _summary(result, cfg, uri, run_id, mlflow_enabled: bool, register: bool, manifest: dict, data_uri: str) -> dict:
    import json

    from pipelines import tracking

    summary = {"checkpoint": result.checkpoint.path if result.checkpoint else None, "metrics": dict(result.metrics or {}),
               "run_id": run_id, "tracking_uri": uri, "model": None, "state": None}
    if result.checkpoint is not None:
        with result.checkpoint.as_directory() as d:
            summary["state"] = json.loads((Path(d) / "state.json").read_text())
            if mlflow_enabled and register:
                summary["model"] = tracking.register_checkpoint(uri, run_id, cfg, d, manifest, data_uri)
    return summary


def run(cfg, data_uri: str, mlflow_enabled: bool = True, status_dir: str | None = None,
        data_cpus: float | None = None, register: bool = True, callbacks: list | None = None,
        parent_run_id: str | None = None) -> dict:
    """Fit with Ray Train; returns a summary (checkpoint path, final metrics, MLflow run id, model version).

    ``callbacks``: Ray Train ``UserCallback``s (a Tune trial passes its report callback); ``parent_run_id`` nests
    the MLflow run under a parent (the sweep's run)."""
    from pipelines import cluster, tracking
    from pipelines.quality import headline_state, quality_state

    data_uri, manifest = _checked_data(cfg, data_uri)
    ray = ensure_ray()
    t = cfg.train
    storage = cluster.s3_storage(storage_uri(t.storage_path), s3_endpoint(cfg.data.s3_endpoint))
    # multi-node: a local checkpoint folder or MLflow store must be seen by every node, checked before any work
    cluster.require_shared(ray, cluster.train_paths(storage, tracking.tracking_uri(cfg, storage) if mlflow_enabled
                                                    else None), "training run",
                           {"CPU": t.num_workers * t.cpus_per_worker, "GPU": t.num_workers if t.use_gpu else 0})
    print(f"[train] driver on node {ray.get_runtime_context().get_node_id()}", flush=True)
    if data_cpus is None:  # Ray Data's read tasks need CPUs the workers may hold all of on a small machine
        free = ray.cluster_resources().get("CPU", 0) - t.num_workers * t.cpus_per_worker
        data_cpus = 1.0 if free >= 1 else 0.0
    datasets = _datasets(cfg, data_uri, manifest, data_cpus)
    loop_config = {"cfg": cfg.to_dict(), "status_dir": status_dir, "torch_threads": t.cpus_per_worker,
                   "headline": headline_state(cfg, data_uri),  # quality_score's real reference (plain arrays)
                   "quality": quality_state(cfg, data_uri, manifest, storage)}  # fd_ssl_quick's extractor + stats
    uri = run_id = None
    if mlflow_enabled:
        uri, run_id = tracking.start_run(cfg, storage, t.run_name, data_uri, manifest, parent_run_id=parent_run_id)
        loop_config["mlflow"] = {"tracking_uri": uri, "run_id": run_id}
        print(f"[train] MLflow: {tracking.scrub_uri(uri)} (run {run_id}); crfgan synthesize finds its registry "
              + ("with the same train.storage_path" if uri.startswith("sqlite:") and not cfg.mlflow.tracking_uri
                 and not os.environ.get("MLFLOW_TRACKING_URI") else "with the same tracking URI"), flush=True)
    trainer = _trainer(cfg, loop_config, storage, datasets, callbacks)
    print(f"[train] {cfg.model.arch} {cfg.model.image_size}³ × {t.iterations} iterations on {t.num_workers} worker(s) "
          f"→ {tracking.scrub_uri(storage)}/{t.run_name}", flush=True)
    ok = False
    try:
        result = trainer.fit()
        ok = True
    finally:
        if mlflow_enabled and not ok:
            tracking.end_run(uri, run_id, ok=False)
    summary = _summary(result, cfg, uri, run_id, mlflow_enabled, register, manifest, data_uri)
    if mlflow_enabled:
        tracking.end_run(uri, run_id, ok=True)
    return summary


def _loop():
    from pipelines.train_loop import train_loop_per_worker

    return train_loop_per_worker


def run_local(cfg, data_uri: str) -> int:
    """``--local``: stream the train split's volumes into memory and run the single-process trainer."""
    import numpy as np

    from crfgan.shards import read_manifest, read_volumes
    from crfgan.trainer import assign_classes, train_local

    if not str(data_uri).endswith(".parquet"):
        check_shards_match(cfg, data_uri, read_manifest(data_uri, cfg.data.s3_endpoint))
    col = cfg.train.class_column
    vols, values = [], []
    for r in read_volumes(data_uri, "train", cfg.data.s3_endpoint):
        vols.append(r["volume"])
        if cfg.model.num_classes:
            if col not in r:
                raise ValueError(f"{data_uri}: no column {col!r} for train.class_column")
            values.append(r[col])
    labels = assign_classes(cfg, values, source=f"{data_uri} (train split)")
    out = Path(storage_uri(cfg.train.storage_path)) / cfg.train.run_name
    res = train_local(cfg, np.stack(vols), out_dir=out, labels=labels)  # the device follows train.use_gpu
    print(f"[train] local: {res.iterations} iterations in {res.seconds:.1f}s; generator at {res.generator_path}")
    return 0


def _no_shards(data_uri: str, e: Exception) -> str:
    from pipelines.cluster import NotSharedError

    if isinstance(e, NotSharedError):  # a multi-node refusal says itself what to set
        return f"train: {e}"
    if "://" not in str(data_uri) and not Path(data_uri).expanduser().exists():
        return f"train: --data {data_uri} does not exist"
    return (f"train: {data_uri} has no manifest.json ({e.__class__.__name__}): --data takes the output folder of "
            f"crfgan preprocess, not raw scans (crfgan preprocess --input SCANS --output SHARDS first)")


def main(args: argparse.Namespace) -> int:
    from crfgan.config import ConfigError

    cfg = _apply(config_from_args(args), args)
    if args.local:
        if "://" in cfg.train.storage_path:
            print("train: --local writes checkpoints to a local folder; pass --storage PATH", file=sys.stderr)
            return 2
        try:
            return run_local(cfg, args.data)
        except FileNotFoundError as e:
            print(_no_shards(args.data, e), file=sys.stderr)
            return 2
        except ConfigError:
            raise
        except (ValueError, RuntimeError) as e:
            print(f"train: {e}", file=sys.stderr)
            return 2
    try:
        summary = run(cfg, args.data, mlflow_enabled=not args.no_mlflow)
    except FileNotFoundError as e:
        print(_no_shards(args.data, e), file=sys.stderr)
        return 2
    except ConfigError:
        raise
    except ValueError as e:
        print(f"train: {e}", file=sys.stderr)
        return 2
    from pipelines import tracking

    m = summary["metrics"]
    print(f"[train] done: iteration {m.get('iteration')} val_l1 {m.get('val_l1')} checkpoint "
          f"{summary['checkpoint']}" + (f"; model {summary['model'][0]} v{summary['model'][1]} @ {tracking.ALIAS}"
                                        if summary["model"] else ""), flush=True)
    return 0

