"""The one training loop, shared by ``crfgan train --local`` (``crfgan.trainer.train_local``), every Ray Train worker
(``pipelines/train_loop.py``) and ``crfgan bench collapse``. The shells add only what is theirs: where batches come
from, DDP wrappers, validation, where checkpoints and metrics go.

- ``start(cfg, device, rank, world, checkpoint)``: networks, optimizers and random streams as a ``Session``, fresh or
  from a checkpoint folder (its class names must match). The same seed builds identical weights on every rank; noise
  and sub-volume positions then follow per-rank streams.
- ``windows(session, data, ...)``: ``train_step`` from ``session.start_it`` to ``train.iterations``, yielding a
  ``Window`` at every report point (``log_every``, ``checkpoint_every``, ``val_every`` when asked, the last
  iteration, or the iteration after which ``stop()`` said so). Losses are summed on the device and read once per
  window (averaged over ranks by ``reduce``); non-finite losses stop the run; the window also gives iterations/s
  and the share of it spent waiting for data. What the caller does between windows is not timed.
- ``checkpoint_state(session, done, ranks)``: what every checkpoint holds beside the weights and the iteration
  (``crfgan.checkpoint.save_checkpoint``): every rank's RNG states (``rng_states``), the *lineage* (the
  ``[start, end)`` ranges each attempt trained), samples seen, world size and which shell wrote it. Both shells
  resume it; a checkpoint of the earlier local layout (``rng`` + ``np_rng``) is read as rank 0's streams.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .checkpoint import load_checkpoint, rng_state, set_rng_state
from .config import Config
from .memory import pin_mmap_threshold
from .models import Networks, Optimizers, apply_execution_options, build_networks, build_optimizers
from .step import Amp, train_step


@dataclass
class Session:
    cfg: Config
    nets: Networks
    opts: Optimizers
    rng: np.random.Generator
    amp: Amp
    device: torch.device
    rank: int = 0
    world: int = 1
    start_it: int = 0
    lineage: list[list[int]] = field(default_factory=list)
    state: dict | None = None  # the resumed checkpoint's state, else None

    @property
    def samples_per_iter(self) -> int:
        return self.world * self.cfg.train.batch_size


@dataclass
class Window:
    done: int  # iterations completed
    last: bool  # done == train.iterations
    checkpoint: bool  # a checkpoint is due (checkpoint_every or the last iteration)
    validate: bool  # validation is due (val_every or the last iteration; only when asked)
    metrics: dict[str, float]


def to_device(x: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    """Host batch → ``device`` without stalling the host on a GPU: a copy from pageable memory waits for the stream's
    queued kernels, so the batch is pinned first and copied asynchronously."""
    if x is None or device.type != "cuda":
        return None if x is None else x.to(device)
    return x.pin_memory().to(device, non_blocking=True)


def start(cfg: Config, device: torch.device, rank: int = 0, world: int = 1,
          checkpoint: str | Path | None = None) -> Session:
    t = cfg.train
    if device.type == "cpu":
        pin_mmap_threshold()  # freed gradient buffers go back to the OS (see crfgan.memory)
    torch.manual_seed(t.seed)  # identical initial weights on every rank
    nets = apply_execution_options(cfg, build_networks(cfg).to(device).train())
    opts = build_optimizers(cfg, nets)  # over the bare modules' parameters (DDP wrappers share them)
    s = Session(cfg, nets, opts, np.random.default_rng([t.seed, rank]), Amp(t.amp, device), device, rank, world)
    torch.manual_seed(t.seed * 1_000_003 + rank)  # per-rank noise
    if checkpoint is None:
        return s
    ck_cfg, _, state = load_checkpoint(checkpoint, device, nets, opts)
    if ck_cfg.model.class_names != cfg.model.class_names:
        raise ValueError(f"{checkpoint} was trained with classes {ck_cfg.model.class_names}, this run has "
                         f"{cfg.model.class_names}: resume with the same data and model.class_names")
    s.state, s.start_it = state, int(state["iteration"])
    s.lineage = [list(r) for r in state.get("lineage", [])]
    ranks = state.get("ranks") or ([{"torch": state["rng"], "np": state["np_rng"]}] if "np_rng" in state else [])
    if rank < len(ranks):  # same world size as before: continue this rank's random streams
        set_rng_state(ranks[rank]["torch"])
        s.rng.bit_generator.state = ranks[rank]["np"]
    else:  # a rank the checkpoint did not have: fresh streams that differ from the first attempt's
        s.rng = np.random.default_rng([t.seed, rank, s.start_it])
        torch.manual_seed(t.seed * 1_000_003 + rank + s.start_it)
    return s


def rng_states(s: Session) -> dict:
    """This rank's random streams (torch CPU/CUDA and the numpy generator) for ``checkpoint_state``'s ``ranks``."""
    return {"torch": rng_state(), "np": s.rng.bit_generator.state}


def checkpoint_state(s: Session, done: int, ranks: list[dict], trainer: str, final_metrics: dict | None = None) -> dict:
    """The ``extra`` of ``save_checkpoint``: ``ranks`` = every rank's ``rng_states`` in rank order."""
    state = {"ranks": ranks, "lineage": s.lineage + [[s.start_it, done]], "samples_seen": done * s.samples_per_iter,
             "world_size": s.world, "trainer": trainer}
    if final_metrics is not None:
        state["final_metrics"] = final_metrics
    return state


def windows(s: Session, data: Iterator, call: Networks | None = None,
            reduce: Callable[[dict[str, float]], dict[str, float]] | None = None,
            validate: bool = False, stop: Callable[[], bool] | None = None) -> Iterator[Window]:
    """Train from ``s.start_it`` to ``train.iterations`` on batches ``(volumes, labels or None)`` from ``data``;
    yield a ``Window`` at each report point. ``call``: the modules ``train_step`` calls (DDP wrappers).
    ``stop``: asked after every iteration (a time budget); once true, that iteration ends the last window."""
    t = s.cfg.train
    sums: dict[str, torch.Tensor] = {}  # on the device: no host sync per iteration
    n_sum, data_s, win_t0, win_it = 0, 0.0, time.perf_counter(), s.start_it
    steady_t0 = steady_it = None  # from the first window on: no start-up, no warm-up (the benchmark's figure)
    for it in range(s.start_it, t.iterations):
        t_data = time.perf_counter()
        real, labels = next(data)
        real, labels = to_device(real, s.device), to_device(labels, s.device)  # pinned + async on a GPU
        data_s += time.perf_counter() - t_data
        losses = train_step(s.nets, s.opts, real, it, s.cfg, s.rng, s.amp, labels=labels, call=call)
        done = it + 1
        for k, v in losses.items():
            sums[k] = sums[k] + v if k in sums else v.clone()
        n_sum += 1
        last = done == t.iterations
        is_ckpt = done % t.checkpoint_every == 0 or last
        is_val = validate and (done % t.val_every == 0 or last)
        stopped = stop is not None and not last and stop()
        if not (done % t.log_every == 0 or is_ckpt or is_val or stopped):
            continue
        dt = time.perf_counter() - win_t0
        keys = sorted(sums)
        means = (torch.stack([sums[k].float() for k in keys]) / n_sum).tolist() if keys else []  # the one read
        metrics = dict(zip(keys, means))
        if reduce is not None:
            metrics = reduce(metrics)
        bad = [k for k, v in metrics.items() if not math.isfinite(v)]
        if bad:
            raise FloatingPointError(f"iteration {done}: non-finite {', '.join(bad)}")
        its = (done - win_it) / max(dt, 1e-9)
        if steady_t0 is not None:
            metrics["its_per_s_steady"] = (done - steady_it) / max(time.perf_counter() - steady_t0, 1e-9)
        metrics["data_wait_frac"] = data_s / max(dt, 1e-9)  # share of the window spent waiting for data
        metrics.update(iteration=done, its_per_s=its, samples_per_s=its * s.samples_per_iter,
                       samples_seen=done * s.samples_per_iter, start_iteration=s.start_it, world_size=s.world)
        yield Window(done, last, is_ckpt, is_val, metrics)
        if stopped:
            return
        sums, n_sum, data_s, win_t0, win_it = {}, 0, 0.0, time.perf_counter(), done
        if steady_t0 is None:
            steady_t0, steady_it = win_t0, done
