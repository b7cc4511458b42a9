"""``crfgan bench feed``: volumes/s that Parquet shards deliver through Ray Data into one Ray Train worker, no model.

The data path is training's own: the datasets come from ``pipelines.train._datasets`` (one item per volume, shuffled
per epoch, read by ``_read_volume`` map tasks) and the worker consumes ``get_dataset_shard("train")`` through
``pipelines.train_loop.endless_batches`` (float16 → float32, stacked into (B, 1, S, S, S) tensors), exactly as
``train_loop_per_worker`` does, with nothing else in the loop. Per case (size, source, CPUs):

- shards: ``--volumes`` distinct synthetic volumes (a smooth phantom plus noise, seeded per volume, written with
  ``crfgan.shards`` as ``crfgan preprocess`` writes them: float16, zstd, one row group per volume), in a local folder
  or in a bucket of a moto S3 server on 127.0.0.1 (``--source s3``);
- CPUs: the Ray Data read tasks take 1 CPU each and the pipeline is capped at ``--cpus`` CPUs
  (``ExecutionOptions.resource_limits``), beside the worker's own CPU;
- the worker takes ``--deliver`` volumes (default: one epoch as training walks it, ``max(volumes, 256)`` rows) and
  reports volumes/s from its first batch to its last (start-up excluded; ``total_s`` includes it), the number of
  distinct volumes it saw (a fingerprint of one slice), its RSS after the first batch and at the end, and its peak;
- the driver samples the object store's plasma usage (``memory_summary``) every 0.25 s: ``store_peak_mb``.

Compared with one GPU's consumption **derived** from the published HA-GAN figure (80 000 iterations × batch 4 in
22 h on 2 × V100 at 256³ → 2.02 volumes/s per GPU), stated as derived, at 256³ only (no published figure at 128³).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
import time

import numpy as np

from pipelines.bench.worker import Sampler

# HA-GAN (Sun et al. 2022): 80 000 iterations of batch 4 in 22 h on 2 V100s at 256³ → volumes/s per GPU (derived)
HAGAN_VOL_PER_S_PER_GPU = 80_000 * 4 / (22 * 3600) / 2
HAGAN_NOTE = "derived: HA-GAN 80 000 it × batch 4 / 22 h / 2 V100 at 256³"


def preset(size: int) -> str:
    from pipelines.bench.train_step import preset as p

    return p(size)


def phantom(size: int, seed: int) -> np.ndarray:
    """A distinct (S, S, S) float32 volume in [-1, 1]: a smooth random field (body-like structure) plus noise."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    low = torch.randn(1, 1, 8, 8, 8, generator=g)
    vol = F.interpolate(low, size=(size,) * 3, mode="trilinear", align_corners=False)[0, 0]
    vol = torch.tanh(vol) * 0.9 + 0.02 * torch.randn(vol.shape, generator=g)
    return vol.clamp_(-1, 1).numpy()


def write_shards(uri: str, size: int, n: int, seed: int = 0, val: int = 0, endpoint: str = "",
                 target_mb: float = 64.0) -> dict:
    """``n`` train (+ ``val``) phantom volumes at ``size``³ as shards + manifest under ``uri`` (folder or s3://),
    the layout ``crfgan preprocess`` writes (``crfgan.shards``); returns the manifest. No nibabel needed."""
    import crfgan
    from crfgan.config import load_config
    from crfgan.shards import SHARD_DIR, filesystem, join, rows_to_table, volume_id, write_manifest, \
        write_table_atomic

    cfg = load_config(preset(size), [f"model.image_size={size}"])
    fs, root = filesystem(uri, endpoint)
    if "://" not in uri:
        os.makedirs(join(root, SHARD_DIR), exist_ok=True)
    per_shard = max(1, int(target_mb * 2**20 // (2 * size**3)))
    shards, counts = [], {"split": {}, "modality": {"ct": n + val}}
    for split, count, base in (("train", n, 0), ("val", val, n)):
        for k, first in enumerate(range(0, count, per_shard)):
            rows = []
            for i in range(first, min(count, first + per_shard)):
                vol = phantom(size, seed * 1_000_003 + base + i)
                rows.append({"volume_id": volume_id(vol, [1.0] * 3), "source_uri": f"phantom://{seed}/{base + i}",
                             "modality": "ct", "split": split, "volume": vol, "spacing": [1.0] * 3,
                             "original_shape": [size] * 3, "original_spacing": [1.0] * 3, "image_size": size,
                             "slab_depth": cfg.model.slab_depth, "num_slabs": size // cfg.model.slab_depth,
                             "config_hash": cfg.data_hash()})
            path = f"{SHARD_DIR}/{split}-{k:05d}.parquet"
            nbytes = write_table_atomic(fs, join(root, path), rows_to_table(rows, size))
            shards.append({"path": path, "split": split, "volumes": len(rows), "bytes": nbytes,
                           "volume_ids": [r["volume_id"] for r in rows]})
        if count:
            counts["split"][split] = count
    manifest = {"volumes_ok": n + val, "volumes_failed": 0, "shards": shards, "config_hash": cfg.data_hash(),
                "config": cfg.to_dict(), "package_version": crfgan.__version__, "counts": counts,
                "volume_shape": [size] * 3, "axis_order": "zyx", "dtype": "float16", "image_size": size,
                "slab_depth": cfg.model.slab_depth, "bytes_out": sum(s["bytes"] for s in shards),
                "source": "synthetic phantom (pipelines.bench.feed.write_shards)"}
    write_manifest(fs, root, manifest)
    return manifest


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def feed_loop(config: dict) -> None:
    """The Ray Train worker: training's batch iterator over this rank's shard, no model; reports once at the end."""
    import ray.train

    from crfgan.memory import peak_rss_bytes
    from pipelines.train_loop import endless_batches

    rank = ray.train.get_context().get_world_rank()
    data = endless_batches(ray.train.get_dataset_shard("train"), config["batch"], seed=config["seed"], rank=rank)
    rss0 = _rss_mb()
    target, n, seen = config["deliver"], 0, set()
    t0 = time.perf_counter()
    t_first = n_first = rss_first = None
    while n < target:
        x, _ = next(data)
        for v in x:
            seen.add(v[0, v.shape[1] // 2].numpy().tobytes())  # one slice: tells the distinct volumes apart
        n += x.shape[0]
        if t_first is None:
            t_first, n_first, rss_first = time.perf_counter(), n, _rss_mb()
    t_end = time.perf_counter()
    steady = t_end - t_first
    figures = {"delivered": n, "distinct": len(seen), "total_s": t_end - t0, "first_batch_s": t_first - t0,
                      "steady_s": steady, "vol_per_s": (n - n_first) / steady if steady > 0 else None,
                      "rss_start_mb": rss0, "rss_first_mb": rss_first, "rss_end_mb": _rss_mb(),
                      "peak_rss_mb": peak_rss_bytes() / 2**20}
    if rank == 0:  # Train v2 keeps only checkpointed metrics in the Result: the figures go to a file the driver reads
        from crfgan.storage import write_text_atomic

        write_text_atomic(config["out"], json.dumps(figures))
    ray.train.report(figures)


class StoreSampler(Sampler):
    """Peak object-store (plasma) usage over the cluster, sampled in a thread from ``memory_summary``."""

    PAT = re.compile(r"Plasma memory usage (\d+) MiB")

    def __init__(self, interval: float = 0.25):
        super().__init__(interval)
        self.peak, self.ok = 0.0, True

    def sample(self):
        from ray._private.internal_api import memory_summary

        try:
            m = self.PAT.search(memory_summary(stats_only=True))
            if m:
                self.peak = max(self.peak, float(m[1]))
        except Exception:  # noqa: BLE001 — an unavailable API leaves the figure empty, never stops the bench
            self.ok = False
            return False
        return True


def feed_case(data_uri: str, size: int, cpus: int, deliver: int | None, batch: int, storage: str,
              endpoint: str = "", seed: int = 0, ordered: bool = True) -> dict:
    """One measured case: training's datasets over ``data_uri`` into one TorchTrainer worker, the ingest with Ray
    Data's ``preserve_order`` (``ordered=False``: rows as read tasks finish, what crfgan train's ingest does today)."""
    import ray
    from ray.data import ExecutionOptions, ExecutionResources
    from ray.train import DataConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from crfgan.config import load_config
    from crfgan.shards import read_manifest
    from pipelines.train import EPOCH_MIN_ROWS, _datasets, ordered_execution

    overrides = [f"model.image_size={size}", f"train.batch_size={batch}", f"train.seed={seed}"]
    if endpoint:
        overrides.append(f"data.s3_endpoint={endpoint}")
    cfg = load_config(preset(size), overrides)
    manifest = read_manifest(data_uri, endpoint)
    n_train = sum(s["volumes"] for s in manifest["shards"] if s["split"] == "train")
    epoch = n_train * max(1, -(-EPOCH_MIN_ROWS // n_train))  # the rows one training epoch walks
    deliver = deliver or epoch
    datasets = {"train": _datasets(cfg, data_uri, manifest, data_cpus=1.0)["train"]}
    out = os.path.join(storage, f"figures-{time.time_ns()}.json")
    os.makedirs(storage, exist_ok=True)
    limits = ExecutionOptions(resource_limits=ExecutionResources(cpu=cpus))
    if ordered:
        limits = ordered_execution(limits)
    trainer = TorchTrainer(
        feed_loop, train_loop_config={"batch": batch, "deliver": deliver, "seed": seed, "out": out},
        scaling_config=ScalingConfig(num_workers=1, use_gpu=False, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(name=f"feed-{size}-{cpus}-{time.time_ns()}", storage_path=storage),
        datasets=datasets, dataset_config=DataConfig(datasets_to_split=["train"], execution_options=limits))
    with StoreSampler() as store:
        trainer.fit()
    with open(out) as f:
        m = json.load(f)
    mb = manifest.get("bytes_out", 0) / 2**20 / max(1, manifest.get("volumes_ok", 0))
    return {**m, "volumes_in_shards": n_train, "epoch_rows": epoch, "shard_mb_per_volume": mb,
            "store_peak_mb": store.peak if store.ok else None,
            "cluster_cpus": ray.cluster_resources().get("CPU")}


def _moto():
    """A moto S3 server bound to 127.0.0.1 (fake credentials in this process's environment, which Ray's workers
    inherit when Ray starts after this); returns (server, endpoint URL)."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        raise SystemExit("bench feed --source s3 needs moto (pip install 'moto[server]'): it serves a loopback S3") from None
    import logging

    for k, v in {"AWS_ACCESS_KEY_ID": "bench-fake-key", "AWS_SECRET_ACCESS_KEY": "bench-fake-secret",
                 "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1",
                 "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required"}.items():
        os.environ[k] = v
    for k in ("AWS_SESSION_TOKEN", "AWS_PROFILE"):
        os.environ.pop(k, None)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    if host != "127.0.0.1":
        server.stop()
        raise RuntimeError(f"moto bound {host}, not loopback")
    return server, f"http://127.0.0.1:{port}"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sizes", default="128,256", help="comma-separated cube edges (default 128,256)")
    p.add_argument("--volumes", type=int, default=8, help="distinct volumes in the train shards per size (default 8)")
    p.add_argument("--deliver", type=int, default=0,
                   help="volumes the worker takes per case (default 0: one training epoch, max(volumes, 256) rows)")
    p.add_argument("--cpus", default="1,2", help="comma-separated CPU caps of the Ray Data pipeline (default 1,2)")
    p.add_argument("--source", default="local", help="comma-separated: local, s3 (moto on 127.0.0.1) (default local)")
    p.add_argument("--order", default="preserved",
                   help="comma-separated: preserved (the ingest keeps the seeded item order; default), unordered (rows "
                        "as read tasks finish, as crfgan train's ingest does today): what a reproducible order costs")
    p.add_argument("--batch", type=int, default=4, help="batch size of the training iterator (default 4)")
    p.add_argument("--workdir", default=None, help="where shards and run folders go (default: a temp folder)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the rows as JSON")


def _csv(text: str, kind=str) -> list:
    return [kind(x) for x in str(text).split(",") if x.strip()]


def run(args: argparse.Namespace) -> None:
    measure(args)


def measure(args: argparse.Namespace) -> dict:
    """The bench; returns ``{"rows": [...], ...}`` (``run`` is the CLI entry, which returns nothing)."""
    from pipelines.bench.table import emit

    sizes, cpus, sources = _csv(args.sizes, int), _csv(args.cpus, int), _csv(args.source)
    orders = list(dict.fromkeys(_csv(getattr(args, "order", "preserved"))))
    bad = [s for s in sources if s not in ("local", "s3")] + [o for o in orders if o not in ("preserved", "unordered")]
    if bad or not orders or not sizes or not cpus or min(cpus) < 1 or args.volumes < 1 or args.batch < 1:
        raise SystemExit(f"bench feed: --source takes local,s3 (got {args.source!r}), --order preserved,unordered; "
                         "--sizes, --cpus (≥ 1), "
                         "--volumes (≥ 1) and --batch (≥ 1) must be given")
    server, endpoint = _moto() if "s3" in sources else (None, "")
    import ray

    if not ray.is_initialized():  # the worker's CPU + the largest data cap (logical CPUs; the box may have fewer)
        ray.init(address=os.environ.get("RAY_ADDRESS") or None, include_dashboard=False, log_to_driver=False,
                 **({} if os.environ.get("RAY_ADDRESS") else {"num_cpus": 1 + max(cpus)}))
    ray.data.DataContext.get_current().enable_progress_bars = False
    rows: list[dict] = []
    try:
        with tempfile.TemporaryDirectory(prefix="crfgan-bench-feed-", dir=args.workdir) as tmp:
            for size in sizes:
                uris = {}
                for src in sources:
                    if src == "local":
                        uris[src] = f"{tmp}/shards-{size}"
                    else:
                        import pyarrow.fs as pafs

                        bucket = f"feed-{size}-{time.time_ns()}"
                        pafs.S3FileSystem(endpoint_override=endpoint.split("://")[1], scheme="http",
                                          region="us-east-1", allow_bucket_creation=True).create_dir(bucket)
                        uris[src] = f"s3://{bucket}/shards"
                    write_shards(uris[src], size, args.volumes, val=1, endpoint=endpoint if src == "s3" else "")
                for src, c, order in ((s_, c_, o_) for s_ in sources for c_ in cpus for o_ in orders):
                    r = feed_case(uris[src], size, c, args.deliver or None, args.batch, f"{tmp}/runs",
                                  endpoint if src == "s3" else "", ordered=order == "preserved")
                    row = {"size": size, "source": src, "data_cpus": c, "order": order, **{k: r.get(k) for k in (
                        "volumes_in_shards", "delivered", "distinct", "vol_per_s", "total_s", "first_batch_s",
                        "rss_first_mb", "rss_end_mb", "peak_rss_mb", "store_peak_mb", "shard_mb_per_volume")}}
                    row["MB_per_s_f32"] = r["vol_per_s"] * 4 * size**3 / 2**20 if r.get("vol_per_s") else None
                    rows.append(row)
                    if args.json:  # the rows so far, so a killed or timed-out run keeps its measured cases
                        from crfgan.storage import write_text_atomic

                        write_text_atomic(args.json, json.dumps({"partial": True, "rows": rows}, indent=2))
                    print(f"  {size}³ {src} {c} CPU {order}: {row['vol_per_s'] or 0:.2f} volumes/s, "
                          f"{row['delivered']} delivered ({row['distinct']} distinct)", flush=True)
    finally:
        if server is not None:
            server.stop()
    def same(x, r, **k):
        return all(x[f] == k.get(f, r[f]) for f in ("size", "source", "data_cpus", "order"))

    for r in rows:
        if len(orders) > 1:  # what the seeded order costs, like for like
            un = next((x for x in rows if same(x, r, order="unordered")), None)
            r["x_vs_unordered"] = r["vol_per_s"] / un["vol_per_s"] if un and un["vol_per_s"] and r["vol_per_s"] \
                else None
        one = next((x for x in rows if same(x, r, data_cpus=min(cpus))), None)
        r[f"x_vs_{min(cpus)}cpu"] = r["vol_per_s"] / one["vol_per_s"] if one and one["vol_per_s"] and r["vol_per_s"] \
            else None
        loc = next((x for x in rows if same(x, r, source="local")), None)
        r["x_vs_local"] = r["vol_per_s"] / loc["vol_per_s"] if loc and loc["vol_per_s"] and r["vol_per_s"] else None
        r["x_vs_1gpu_hagan"] = r["vol_per_s"] / HAGAN_VOL_PER_S_PER_GPU if r["size"] == 256 and r["vol_per_s"] \
            else None
    extra = {"hagan_vol_per_s_per_gpu": HAGAN_VOL_PER_S_PER_GPU, "hagan_note": HAGAN_NOTE,
             "batch": args.batch, "volumes": args.volumes}
    emit(f"feed: Parquet → Ray Data → one Ray Train worker (training's iterator, no model); x_vs_1gpu_hagan at 256³ "
         f"against {HAGAN_VOL_PER_S_PER_GPU:.2f} volumes/s ({HAGAN_NOTE})", rows, args.json, extra)
    return {"rows": rows, **extra}
