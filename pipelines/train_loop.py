"""The Ray Train v2 per-worker loop: DDP over each CRF-GAN network, streamed shards, checkpoints, resume, val_l1.

Runs inside every TorchTrainer worker (``train_loop_per_worker(config)``); the driver is ``pipelines/train.py``.

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
from crfgan.memory import peak_rss_bytes, pin_mmap_threshold
from crfgan.storage import write_text_atomic
from crfgan.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from crfgan.config import Config, config_from_dict
from crfgan.metrics.quick import fd_ssl_quick, quality_score_quick
from crfgan.models import apply_execution_options, build_networks, build_optimizers
from crfgan.step import Amp, train_step
from crfgan.trainer import to_device

VAL_MAX_VOLUMES = 8  # validation streams at most this many val volumes (a cheap, fixed-cost metric)


def _dist() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this worker: CUDA allocator peak on a GPU, else the process's max RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return peak_rss_bytes() / 2**20


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
            ck_cfg, _, state = load_checkpoint(d, device, nets, opts)
        if ck_cfg.model.class_names != cfg.model.class_names:
            raise ValueError(f"the checkpoint was trained with classes {ck_cfg.model.class_names}, this run has "
                             f"{cfg.model.class_names}: resume with the same data and model.class_names")
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
    if start_it >= t.iterations:
        # a finished run started again (e.g. a resumed sweep relaunching a trial whose end Tune had not recorded):
        # report its final result again, so the caller ends with the run's real last metrics, not a stale earlier one
        final = dict(state.get("final_metrics") or {"iteration": start_it})
        final.update(resumed_finished=1, resumed_checkpoint_path=ckpt.path)
        if rank == 0:
            print(f"[train] the run had already finished at iteration {start_it}; reporting its final result",
                  flush=True)
        ray.train.report(final)
        return
    if rank == 0:
        print(f"[train] rank 0 of {world} on node {ray.get_runtime_context().get_node_id()}", flush=True)

    # DDP wrappers (world size > 1) for train_step to call; nets keeps the bare modules (frozen calls, checkpoints)
    call = dataclasses.replace(nets, **{name: ray.train.torch.prepare_model(module, move_to_device=False)
                                        for name, module in nets.trained()})  # the EMA copy of G is never wrapped

    tracker = None
    if rank == 0 and config.get("mlflow"):
        from pipelines.tracking import WorkerTracker

        tracker = WorkerTracker(config["mlflow"]["tracking_uri"], config["mlflow"]["run_id"], cfg)
        tracker.log_metrics({"resumed_from": start_it}, step=start_it)

    amp = Amp(t.amp, device)
    data = endless_batches(ray.train.get_dataset_shard("train"), t.batch_size, seed=t.seed * 7919 + rank, rank=rank,
                           labels=cfg.model.num_classes > 0)
    val_iter = ray.train.get_dataset_shard("val") if rank == 0 else None
    samples_per_iter = world * t.batch_size
    sums: dict[str, torch.Tensor] = {}  # on the device: no host sync per iteration
    data_s = 0.0  # time spent waiting for batches in the current report window
    n_sum, win_t0, win_it = 0, time.perf_counter(), start_it
    tmp_dirs: list[str] = []  # parents of uploaded checkpoint copies, removed once Ray has deleted their content
    steady_t0 = steady_it = None  # from the first report on: no start-up, no warm-up (the benchmark's figure)
    for it in range(start_it, t.iterations):
        t_data = time.perf_counter()
        real, labels = next(data)
        real, labels = to_device(real, device), to_device(labels, device)  # pinned + async on a GPU
        data_s += time.perf_counter() - t_data
        losses = train_step(nets, opts, real, it, cfg, rng, amp, labels=labels, call=call)
        done = it + 1
        for k, v in losses.items():
            sums[k] = sums[k] + v if k in sums else v.clone()
        n_sum += 1
        last = done == t.iterations
        is_ckpt = done % t.checkpoint_every == 0 or last
        is_val = done % t.val_every == 0 or last
        if not (done % t.log_every == 0 or is_ckpt or is_val):
            continue
        # ---- report: every rank reaches this point at the same iterations -----------------------------------
        dt = time.perf_counter() - win_t0
        keys = sorted(sums)
        means = (torch.stack([sums[k].float() for k in keys]) / n_sum).tolist() if keys else []  # the one read
        metrics = _mean_over_ranks(dict(zip(keys, means)), device)
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
            if config.get("headline"):  # the headline score and its components (crfgan.metrics.headline)
                hs = quality_score_quick(nets.eval_generator(), cfg, config["headline"], device) if rank == 0 else {}
                for k in ("quality_score", "swd_fine", "intensity_shift_hu", "dup_ratio", "seam_score"):
                    x = _broadcast_float(hs.get(k, 0.0), device)
                    if math.isfinite(x):  # seam_score is NaN below 64³ (no reference boundaries): not reported
                        metrics[k] = x
            if config.get("quality"):  # lower is better; see crfgan.metrics.quick
                q = fd_ssl_quick(nets.eval_generator(), cfg, config["quality"], device) if rank == 0 else 0.0
                metrics["fd_ssl_quick"] = _broadcast_float(q, device)
        rngs = _gather({"torch": rng_state(), "np": rng.bit_generator.state}) if is_ckpt else None
        if is_ckpt:  # DDP health: every rank must hold the same weights (0 unless gradients were not all-reduced)
            with torch.no_grad():
                local_sums = [float(sum(p.double().sum() for p in mod.parameters())) for _, mod in nets.items()]
            sums_r = _gather(local_sums)
            metrics["param_divergence"] = max(abs(a - b) for r in sums_r for a, b in zip(r, sums_r[0]))
        checkpoint = None
        _remove_empty(tmp_dirs)
        if is_ckpt and rank == 0:
            tmp_dirs.append(tempfile.mkdtemp(prefix="crfgan-ckpt-"))
            path = save_checkpoint(os.path.join(tmp_dirs[-1], "checkpoint"), cfg, nets, opts, done, {
                "ranks": rngs, "lineage": lineage + [[start_it, done]], "samples_seen": done * samples_per_iter,
                "world_size": world, "trainer": "ray", **({"final_metrics": metrics} if last else {})})
            checkpoint = ray.train.Checkpoint.from_directory(str(path))
        # ASYNC: rank 0 uploads in the background and deletes its local copy after; no rank waits for the upload
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_upload_mode=ray.train.CheckpointUploadMode.ASYNC)
        if tracker is not None:
            tracker.log_metrics(metrics, step=done)
            if is_val:
                tracker.log_montage(nets.eval_generator(), done, device)
        sums, n_sum, win_t0, win_it, data_s = {}, 0, time.perf_counter(), done, 0.0
        if steady_t0 is None:
            steady_t0, steady_it = win_t0, done
    if tracker is not None:
        tracker.flush()
        tracker.log_curves()
