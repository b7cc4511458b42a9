"""The Ray Train v2 per-worker loop: DDP over each CRF-GAN network, streamed shards, checkpoints, resume, val_l1.

Runs inside every TorchTrainer worker (``train_loop_per_worker(config)``); the driver is ``pipelines/train.py``.

- Networks: every one (G, D, E, CRF; HA-GAN: G^L, D^L, E^G) is wrapped by ``prepare_model`` on its own, as
  ``crfgan/step.py`` expects (it calls the wrapper only of the network a sub-step trains). The same seed builds
  identical weights on every rank, and DDP broadcasts rank 0's anyway.
- Data: ``get_dataset_shard("train")`` streams this rank's share of the shards, one batch at a time and epoch after
  epoch; no worker ever holds the whole dataset. Seeds differ per rank (noise, sub-volume positions, shuffling).
- Checkpoints: every ``train.checkpoint_every`` iterations and at the end, via ``ray.train.report`` (a barrier that
  every rank calls equally often); rank 0 attaches ``Checkpoint.from_directory``. The checkpoint holds every
  network and optimizer (``crfgan.checkpoint``), the iteration, every rank's RNG states and the *lineage*: the
  ``[start, end)`` iteration ranges each attempt trained. On restart (``FailureConfig`` or a rerun with the same
  RunConfig name) training continues from ``get_checkpoint()`` at the next iteration, so a run ends at exactly
  ``train.iterations`` and the lineage tiles ``[0, iterations)`` with no overlap. What is not restored: the
  position inside the data stream (an epoch restarts; the sample order after a resume differs from an unbroken run).
- Validation (``train.val_every``): ``val_l1`` = mean L1 of G^H(E(x_slab)) vs x_slab over every sub-volume position
  of up to ``VAL_MAX_VOLUMES`` val volumes, computed on rank 0 and broadcast (the metric Tune optimises).
"""

from __future__ import annotations

import math
import os
import resource
import shutil
import tempfile
import time

import numpy as np
import torch
import torch.distributed as dist

import ray.train
import ray.train.torch
from crfgan.memory import pin_mmap_threshold
from crfgan.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from crfgan.config import Config, config_from_dict
from crfgan.models import apply_execution_options, build_networks, build_optimizers
from crfgan.step import Amp, raw, train_step

VAL_MAX_VOLUMES = 8  # validation streams at most this many val volumes (a cheap, fixed-cost metric)


def _dist() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this worker: CUDA allocator peak on a GPU, else the process's max RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def endless_batches(shard, batch_size: int, seed: int, rank: int):
    """(B, 1, S, S, S) float32 batches from a streamed dataset shard, epoch after epoch.

    Rows are buffered across batch borders, so a rank with fewer volumes than ``batch_size`` still trains.
    """
    buf: list[np.ndarray] = []
    epoch = 0
    while True:
        rows = 0
        it = shard.iter_batches(batch_size=batch_size, batch_format="numpy", local_shuffle_buffer_size=batch_size,
                                local_shuffle_seed=seed + 1000 * epoch)
        for b in it:
            for v in b["volume"]:
                buf.append(np.asarray(v, dtype=np.float32))
                rows += 1
                if len(buf) == batch_size:
                    yield torch.from_numpy(np.stack(buf))[:, None]  # (B, 1, S, S, S)
                    buf = []
        if rows == 0:
            raise RuntimeError(f"worker rank {rank} received no training volumes: the train split has fewer volumes "
                               "than workers; lower train.num_workers or add scans")
        epoch += 1


@torch.no_grad()
def validation_l1(nets, cfg: Config, val_iter, device: torch.device) -> float:
    """Mean encoder reconstruction L1 over every sub-volume position of the first val volumes."""
    m = cfg.model
    g, e = raw(nets.g), raw(nets.e)
    was = e.training, g.training
    e.eval(), g.eval()
    total, n = 0.0, 0
    try:
        for b in val_iter.iter_batches(batch_size=1, batch_format="numpy"):
            x = torch.from_numpy(np.asarray(b["volume"], dtype=np.float32))[:, None].to(device)  # (1, 1, S, S, S)
            for pos in range(0, m.image_size - m.slab_depth + 1, m.slab_depth):
                slab = x[:, :, pos : pos + m.slab_depth]  # (1, 1, S/8, S, S)
                total += float((g.renderer(e(slab)) - slab).abs().mean())
                n += 1
            if n >= VAL_MAX_VOLUMES * (m.image_size // m.slab_depth):
                break
    finally:
        e.train(was[0]), g.train(was[1])
    return total / max(n, 1) if n else float("nan")


def _broadcast_float(value: float, device: torch.device) -> float:
    if not _dist():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.broadcast(t, 0)
    return float(t.item())


def _mean_over_ranks(values: dict[str, float], device: torch.device) -> dict[str, float]:
    if not _dist() or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return dict(zip(keys, t.tolist()))


def _gather(obj) -> list:
    if not _dist():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _write_status(status_dir: str | None, rank: int, start_it: int) -> None:
    """Optional: one JSON file per (rank, process) with its pid and start iteration (ops and the fault test)."""
    if not status_dir:
        return
    import json

    os.makedirs(status_dir, exist_ok=True)
    path = os.path.join(status_dir, f"rank{rank}-pid{os.getpid()}.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"rank": rank, "pid": os.getpid(), "start_iteration": start_it, "time": time.time()}, f)
    os.replace(tmp, path)


def train_loop_per_worker(config: dict) -> None:
    """``config``: ``cfg`` (Config.to_dict()), optional ``mlflow`` ({tracking_uri, run_id}), ``status_dir``."""
    cfg = config_from_dict(config["cfg"])
    t = cfg.train
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        pin_mmap_threshold()  # freed gradient buffers go back to the OS (see crfgan.memory)
    if config.get("torch_threads"):
        torch.set_num_threads(int(config["torch_threads"]))  # intra-op threads = the worker's CPUs

    torch.manual_seed(t.seed)  # identical initial weights on every rank
    nets = apply_execution_options(cfg, build_networks(cfg).to(device).train())
    opts = build_optimizers(cfg, nets)  # over the bare modules' parameters, which the DDP wrappers share
    rng = np.random.default_rng([t.seed, rank])
    torch.manual_seed(t.seed * 1_000_003 + rank)  # per-rank noise
    start_it, lineage = 0, []
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            _, _, state = load_checkpoint(d, device, nets, opts)
        start_it, lineage = int(state["iteration"]), [list(s) for s in state.get("lineage", [])]
        ranks = state.get("ranks", [])
        if rank < len(ranks):  # same world size as before: continue this rank's random streams
            set_rng_state(ranks[rank]["torch"])
            rng.bit_generator.state = ranks[rank]["np"]
        else:
            rng = np.random.default_rng([t.seed, rank, start_it])
            torch.manual_seed(t.seed * 1_000_003 + rank + start_it)
        if rank == 0:
            print(f"[train] resumed from checkpoint at iteration {start_it} (lineage {lineage})", flush=True)
    _write_status(config.get("status_dir"), rank, start_it)
    if rank == 0:
        print(f"[train] rank 0 of {world} on node {ray.get_runtime_context().get_node_id()}", flush=True)

    for name, module in nets.items():
        setattr(nets, name, ray.train.torch.prepare_model(module, move_to_device=False))

    tracker = None
    if rank == 0 and config.get("mlflow"):
        from pipelines.tracking import WorkerTracker

        tracker = WorkerTracker(config["mlflow"]["tracking_uri"], config["mlflow"]["run_id"], cfg)
        tracker.log_metrics({"resumed_from": start_it}, step=start_it)

    amp = Amp(t.amp, device)
    data = endless_batches(ray.train.get_dataset_shard("train"), t.batch_size, seed=t.seed * 7919 + rank, rank=rank)
    val_iter = ray.train.get_dataset_shard("val") if rank == 0 else None
    samples_per_iter = world * t.batch_size
    sums: dict[str, float] = {}
    data_s = 0.0  # time spent waiting for batches in the current report window
    n_sum, win_t0, win_it = 0, time.perf_counter(), start_it
    steady_t0 = steady_it = None  # from the first report on: no start-up, no warm-up (the benchmark's figure)
    for it in range(start_it, t.iterations):
        t_data = time.perf_counter()
        real = next(data).to(device, non_blocking=True)
        data_s += time.perf_counter() - t_data
        losses = train_step(nets, opts, real, it, cfg, rng, amp)
        done = it + 1
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + float(v)
        n_sum += 1
        last = done == t.iterations
        is_ckpt = done % t.checkpoint_every == 0 or last
        is_val = done % t.val_every == 0 or last
        if not (done % t.log_every == 0 or is_ckpt or is_val):
            continue
        # ---- report: every rank reaches this point at the same iterations -----------------------------------
        dt = time.perf_counter() - win_t0
        metrics = _mean_over_ranks({k: v / n_sum for k, v in sums.items()}, device)
        bad = [k for k, v in metrics.items() if not math.isfinite(v)]
        if bad:
            raise FloatingPointError(f"iteration {done}: non-finite {', '.join(bad)}")
        its = (done - win_it) / max(dt, 1e-9)
        if steady_t0 is not None:
            metrics["its_per_s_steady"] = (done - steady_it) / max(time.perf_counter() - steady_t0, 1e-9)
        metrics["data_wait_frac"] = data_s / max(dt, 1e-9)  # share of the window spent waiting for data
        metrics.update(iteration=done, its_per_s=its, samples_per_s=its * samples_per_iter,
                       samples_seen=done * samples_per_iter, start_iteration=start_it, world_size=world)
        peaks = _gather(peak_memory_mb(device))
        metrics.update({f"peak_mem_mb_rank{r}": p for r, p in enumerate(peaks)}, peak_mem_mb_max=max(peaks))
        if is_val:
            v = validation_l1(nets, cfg, val_iter, device) if rank == 0 else 0.0
            metrics["val_l1"] = _broadcast_float(v, device)
        rngs = _gather({"torch": rng_state(), "np": rng.bit_generator.state}) if is_ckpt else None
        if is_ckpt:  # DDP health: every rank must hold the same weights (0 unless gradients were not all-reduced)
            with torch.no_grad():
                local_sums = [float(sum(p.double().sum() for p in raw(mod).parameters())) for _, mod in nets.items()]
            sums_r = _gather(local_sums)
            metrics["param_divergence"] = max(abs(a - b) for r in sums_r for a, b in zip(r, sums_r[0]))
        tmp = None
        checkpoint = None
        if is_ckpt and rank == 0:
            tmp = tempfile.mkdtemp(prefix="crfgan-ckpt-")
            path = save_checkpoint(os.path.join(tmp, "checkpoint"), cfg, nets, opts, done, {
                "ranks": rngs, "lineage": lineage + [[start_it, done]], "samples_seen": done * samples_per_iter,
                "world_size": world})
            checkpoint = ray.train.Checkpoint.from_directory(str(path))
        ray.train.report(metrics, checkpoint=checkpoint)
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
        if tracker is not None:
            tracker.log_metrics(metrics, step=done)
            if is_val:
                tracker.log_montage(raw(nets.g), done, device)
        sums, n_sum, win_t0, win_it, data_s = {}, 0, time.perf_counter(), done, 0.0
        if steady_t0 is None:
            steady_t0, steady_it = win_t0, done
    if tracker is not None:
        tracker.flush()
