"""The Ray Train v2 per-worker loop: DDP over each CRF-GAN network, streamed shards, checkpoints, resume, val_l1.

Runs inside every TorchTrainer worker (``train_loop_per_worker(config)``); the driver is ``pipelines/train.py``.
A shell around the one training loop (``crfgan.loop``: start or resume, the iterations, the report windows and the
checkpoint state), which ``crfgan train --local`` runs too; this file adds the DDP wrappers, the streamed shard,
validation, the cross-rank reductions and Ray Train's report/checkpoint.

- Networks: every one (G, D, E, CRF; HA-GAN: G^L, D^L, E^G) is wrapped by ``prepare_model`` on its own; the
  wrappers go to ``train_step(call=...)``, which calls the wrapper only of the network a sub-step trains and the bare
  module otherwise. The same seed builds identical weights on every rank, and DDP broadcasts rank 0's anyway.
  Backend: NCCL on GPU workers, gloo on CPU ones (``pipelines/train.py``).
- Data: ``get_dataset_shard("train")`` streams this rank's share of the shards, one batch at a time and epoch after
  epoch; no worker ever holds the whole dataset. Seeds differ per rank (noise, sub-volume positions, shuffling).
- Checkpoints: every ``train.checkpoint_every`` iterations and at the end, via ``ray.train.report`` (a barrier that
  every rank calls equally often); rank 0 writes the checkpoint to a local temp folder and attaches it with
  ``CheckpointUploadMode.ASYNC``: the upload to storage runs in the background (Ray deletes the local copy after it),
  so no rank waits for it (with SYNC, rank 0 uploads inside ``report`` and the others stall at the next all-reduce).
  The checkpoint holds every network and optimizer (``crfgan.checkpoint``), the iteration, every rank's RNG states
  and the *lineage*: the ``[start, end)`` iteration ranges each attempt trained. On restart (``FailureConfig`` or a
  rerun with the same RunConfig name) training continues from ``get_checkpoint()`` at the next iteration, so a run
  ends at exactly ``train.iterations`` and the lineage tiles ``[0, iterations)`` with no overlap. What is not
  restored: the position inside the data stream (an epoch restarts; the sample order after a resume differs).
- Host syncs: losses stay on the device and are summed there; they are read once per report window.
- Classes (``model.num_classes`` > 0): each row carries its class index (``label``), assigned by the driver.
- Validation (``train.val_every``): ``val_l1`` = mean L1 of G^H(E(x_slab)) vs x_slab over every sub-volume position
  of up to ``VAL_MAX_VOLUMES`` val volumes, computed on rank 0 and broadcast; beside it ``fd_ssl_quick``, the
  sample-quality score Tune optimises (``crfgan.metrics.quick``; its inputs come in ``config["quality"]``). With
  ``train.ema_decay`` > 0 the sample scores and the montage render the EMA copy of G (val_l1 stays on G^H, which E
  is trained against); the EMA copy is checkpointed (``g_ema.``) but never DDP-wrapped: it takes no gradients.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import tempfile
import time

import numpy as np
import torch
import torch.distributed as dist

import ray.train
import ray.train.torch
from crfgan import loop
from crfgan.memory import peak_memory_mb
from crfgan.storage import write_text_atomic
from crfgan.checkpoint import save_checkpoint
from crfgan.config import Config, config_from_dict
from crfgan.metrics.quick import fd_ssl_quick, quality_score_quick

VAL_MAX_VOLUMES = 8  # validation streams at most this many val volumes (a cheap, fixed-cost metric)


def _dist() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def endless_batches(shard, batch_size: int, seed: int, rank: int, labels: bool = False):
    """``(volumes (B, 1, S, S, S) float32, labels (B,) int64 or None)`` from a streamed dataset shard, epoch after
    epoch. The item order of every epoch is a fresh shuffle (``pipelines/train.py``).

    Rows are buffered across batch borders, so a rank with fewer volumes than ``batch_size`` still trains.
    """
    buf: list[np.ndarray] = []
    lab: list[int] = []
    epoch = 0
    while True:
        rows = 0
        it = shard.iter_batches(batch_size=batch_size, batch_format="numpy", local_shuffle_buffer_size=batch_size,
                                local_shuffle_seed=seed + 1000 * epoch)
        for b in it:
            for i, v in enumerate(b["volume"]):
                buf.append(np.asarray(v, dtype=np.float32))
                if labels:
                    lab.append(int(b["label"][i]))
                rows += 1
                if len(buf) == batch_size:
                    y = torch.tensor(lab, dtype=torch.long) if labels else None
                    yield torch.from_numpy(np.stack(buf))[:, None], y  # (B, 1, S, S, S), (B,)
                    buf, lab = [], []
        if rows == 0:
            raise RuntimeError(f"worker rank {rank} received no training volumes: the train split has fewer volumes "
                               "than workers; lower train.num_workers or add scans")
        epoch += 1


@torch.no_grad()
def validation_l1(nets, cfg: Config, val_iter, device: torch.device) -> float:
    """Mean encoder reconstruction L1 over every sub-volume position of the first val volumes."""
    m = cfg.model
    g, e = nets.g, nets.e
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


def _remove_empty(dirs: list[str]) -> None:
    for d in list(dirs):
        try:
            os.rmdir(d)  # only succeeds once the background upload has removed the checkpoint inside
        except FileNotFoundError:
            pass
        except OSError:
            continue
        dirs.remove(d)


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
    write_text_atomic(path, json.dumps({"rank": rank, "pid": os.getpid(), "start_iteration": start_it, "time": time.time()}))


def train_loop_per_worker(config: dict) -> None:
    """``config``: ``cfg`` (Config.to_dict()), optional ``mlflow`` ({tracking_uri, run_id}), ``status_dir``."""
    cfg = config_from_dict(config["cfg"])
    t = cfg.train
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if config.get("torch_threads"):
        torch.set_num_threads(int(config["torch_threads"]))  # intra-op threads = the worker's CPUs

    ckpt = ray.train.get_checkpoint()
    with ckpt.as_directory() if ckpt is not None else contextlib.nullcontext() as d:
        s = loop.start(cfg, device, rank, world, checkpoint=d)
    nets, start_it = s.nets, s.start_it
    if ckpt is not None and rank == 0:
        print(f"[train] resumed from checkpoint at iteration {start_it} (lineage {s.lineage})", flush=True)
    _write_status(config.get("status_dir"), rank, start_it)
    if start_it >= t.iterations:
        _report_finished(s, ckpt)
        return
    if rank == 0:
        print(f"[train] rank 0 of {world} on node {ray.get_runtime_context().get_node_id()}", flush=True)

    # DDP wrappers (world size > 1) for train_step to call; nets keeps the bare modules (frozen calls, checkpoints)
    call = dataclasses.replace(nets, **{name: ray.train.torch.prepare_model(module, move_to_device=False)
                                        for name, module in nets.trained()})  # the EMA copy of G is never wrapped

    tracker = _tracker(config, cfg, rank, start_it)
    data = endless_batches(ray.train.get_dataset_shard("train"), t.batch_size, seed=t.seed * 7919 + rank, rank=rank,
                           labels=cfg.model.num_classes > 0)
    val_iter = ray.train.get_dataset_shard("val") if rank == 0 else None
    tmp_dirs: list[str] = []  # parents of uploaded checkpoint copies, removed once Ray has deleted their content
    for w in loop.windows(s, data, call=call, reduce=lambda m: _mean_over_ranks(m, device), validate=True):
        # every rank reaches each window at the same iterations
        done, metrics = w.done, w.metrics
        peaks = _gather(peak_memory_mb(device))
        metrics.update({f"peak_mem_mb_rank{r}": p for r, p in enumerate(peaks)}, peak_mem_mb_max=max(peaks))
        if w.validate:
            metrics.update(_validate(s, config, val_iter))
        if w.checkpoint:  # every rank's streams; DDP health: the ranks' weights must be identical (0)
            rngs, metrics["param_divergence"] = _gather(loop.rng_states(s)), _param_divergence(nets)
        checkpoint = None
        _remove_empty(tmp_dirs)
        if w.checkpoint and rank == 0:
            tmp_dirs.append(tempfile.mkdtemp(prefix="crfgan-ckpt-"))
            path = save_checkpoint(os.path.join(tmp_dirs[-1], "checkpoint"), cfg, nets, s.opts, done,
                                   loop.checkpoint_state(s, done, rngs, "ray", metrics if w.last else None))
            checkpoint = ray.train.Checkpoint.from_directory(str(path))
        # ASYNC: rank 0 uploads in the background and deletes its local copy after; no rank waits for the upload
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_upload_mode=ray.train.CheckpointUploadMode.ASYNC)
        if tracker is not None:
            tracker.log_metrics(metrics, step=done)
            if w.validate:
                tracker.log_montage(nets.eval_generator(), done, device)
    if tracker is not None:
        tracker.flush()
        tracker.log_curves()


def _tracker(config: dict, cfg: Config, rank: int, start_it: int):
    """Rank 0's MLflow logger when the driver opened a run (``config["mlflow"]``), else None."""
    if rank != 0 or not config.get("mlflow"):
        return None
    from pipelines.tracking import WorkerTracker

    tracker = WorkerTracker(config["mlflow"]["tracking_uri"], config["mlflow"]["run_id"], cfg)
    tracker.log_metrics({"resumed_from": start_it}, step=start_it)
    return tracker


def _report_finished(s, ckpt) -> None:
    """A finished run started again (e.g. a resumed sweep relaunching a trial whose end Tune had not recorded):
    report its final result again, so the caller ends with the run's real last metrics, not a stale earlier one."""
    final = dict((s.state or {}).get("final_metrics") or {"iteration": s.start_it})
    final.update(resumed_finished=1, resumed_checkpoint_path=ckpt.path)
    if s.rank == 0:
        print(f"[train] the run had already finished at iteration {s.start_it}; reporting its final result", flush=True)
    ray.train.report(final)


def _validate(s, config: dict, val_iter) -> dict:
    """val_l1 (and the sample scores the run was asked for) on rank 0, broadcast to every rank."""
    nets, cfg, device, rank = s.nets, s.cfg, s.device, s.rank
    out = {}
    v = validation_l1(nets, cfg, val_iter, device) if rank == 0 else 0.0
    out["val_l1"] = _broadcast_float(v, device)
    if config.get("headline"):  # the headline score and its components (crfgan.metrics.headline)
        hs = quality_score_quick(nets.eval_generator(), cfg, config["headline"], device) if rank == 0 else {}
        for k in ("quality_score", "swd_fine", "intensity_shift_hu", "dup_ratio", "seam_score"):
            x = _broadcast_float(hs.get(k, 0.0), device)
            if math.isfinite(x):  # seam_score is NaN below 64³ (no reference boundaries): not reported
                out[k] = x
    if config.get("quality"):  # lower is better; see crfgan.metrics.quick
        q = fd_ssl_quick(nets.eval_generator(), cfg, config["quality"], device) if rank == 0 else 0.0
        out["fd_ssl_quick"] = _broadcast_float(q, device)
    return out


def _param_divergence(nets) -> float:
    """The largest difference between ranks of any network's parameter sum."""
    with torch.no_grad():
        local_sums = [float(sum(p.double().sum() for p in mod.parameters())) for _, mod in nets.items()]
    sums_r = _gather(local_sums)
    return max(abs(a - b) for r in sums_r for a, b in zip(r, sums_r[0]))
