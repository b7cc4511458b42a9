"""Single-process trainer on in-memory volumes: exercises the model without Ray (``crfgan train --local``).

A thin shell around the one training loop (``crfgan.loop``), which the Ray Train workers (``pipelines/train_loop.py``)
run too: random batches from memory, checkpoints ``checkpoint_NNNNNN`` in a local folder, the generator at the end.
"""

from __future__ import annotations

import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable, Iterable

import numpy as np
import torch

from . import loop
from .checkpoint import save_checkpoint, save_generator
from .config import Config
from .models import Networks

CKPT_RE = re.compile(r"^checkpoint_(\d{6,})$")
NOT_LOGGED = ("iteration", "samples_seen", "start_iteration", "world_size", "its_per_s_steady")  # local history rows


@dataclass
class TrainResult:
    nets: Networks
    history: list[dict] = field(default_factory=list)
    generator_path: Path | None = None
    iterations: int = 0
    seconds: float = 0.0
    start_iteration: int = 0  # where this call started (the resumed checkpoint's iteration, else 0)


def load_volumes(paths: Iterable[str | Path], cfg: Config) -> np.ndarray:
    """Read scans and prepare them to the config's cube: (N, S, S, S) float32 in [-1, 1]."""
    from .io import load_scan
    from .volume import prepare_volume

    vols = [prepare_volume(load_scan(str(p), max_voxels=cfg.data.max_voxels), cfg) for p in paths]
    if not vols:
        raise ValueError("no volumes to train on")
    return np.stack(vols).astype(np.float32)


def assign_classes(cfg: Config, values: Iterable[str], source: str = "the train split") -> np.ndarray | None:
    """The class index of each volume from its ``train.class_column`` values; fills ``model.class_names``.

    Unconditional models (``model.num_classes=0``) get ``None``. With no names configured, the names are the sorted
    distinct values, and their count must equal ``model.num_classes``; configured names must cover every value.
    """
    m = cfg.model
    if m.num_classes == 0:
        return None
    values = [str(v) for v in values]
    found = sorted(set(values))
    col = cfg.train.class_column
    if not m.class_names:
        if len(found) != m.num_classes:
            raise ValueError(f"{source} has {len(found)} distinct {col!r} values ({', '.join(found)}) but "
                             f"model.num_classes={m.num_classes}: set model.num_classes={len(found)}, or list every "
                             f"class in model.class_names")
        m.class_names = found
    unknown = [v for v in found if v not in m.class_names]
    if unknown:
        raise ValueError(f"{source}: {col!r} value {unknown[0]!r} is not in model.class_names {m.class_names}")
    return np.array([m.class_names.index(v) for v in values], dtype=np.int64)


def select_device(cfg: Config, device: str | None = None) -> torch.device:
    """``device`` if given, else a GPU exactly when ``train.use_gpu`` (never just because one is present)."""
    if device is None:
        device = "cuda" if cfg.train.use_gpu else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.use_gpu=true but PyTorch sees no CUDA device on this machine; "
                           "set train.use_gpu=false to train on the CPU")
    return dev


def refuse_foreign_run(out: Path) -> None:
    """A Ray Train run folder (its snapshot, timestamped checkpoints) is not resumable by the local trainer."""
    if not out.is_dir():
        return
    ray_marks = [p.name for p in out.iterdir()
                 if p.name.startswith("checkpoint_manager_snapshot") or (p.name.startswith("checkpoint_")
                                                                          and p.is_dir() and not CKPT_RE.match(p.name))]
    if ray_marks:
        raise RuntimeError(f"{out} holds a Ray Train run ({ray_marks[0]}); --local cannot resume it. Continue it "
                           "with `crfgan train` (without --local), or pick another --run-name or --storage")


def seed_everything(seed: int) -> np.random.Generator:
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def batches(volumes: np.ndarray, batch_size: int, rng: np.random.Generator, labels: np.ndarray | None = None):
    """Endless random batches ``(volumes (B, 1, S, S, S), labels (B,) or None)``: every batch a fresh random draw
    (with fewer volumes than B, volumes repeat within a batch)."""
    n = len(volumes)
    while True:
        idx = rng.choice(n, size=batch_size, replace=n < batch_size)
        yield torch.from_numpy(volumes[idx][:, None]), (torch.from_numpy(labels[idx]) if labels is not None else None)


def checkpoints(out_dir: Path) -> list[Path]:
    if not out_dir.is_dir():
        return []
    return sorted(p for p in out_dir.iterdir() if CKPT_RE.match(p.name))


def train_local(
    cfg: Config,
    volumes: np.ndarray,
    out_dir: str | Path | None = None,
    device: str | None = None,
    log: Callable[[str], None] = print,
    resume: bool = True,
    labels: np.ndarray | None = None,
) -> TrainResult:
    """Train ``cfg.train.iterations`` iterations on ``volumes`` (N, S, S, S) (``labels`` (N,): class indices, required
    when ``model.num_classes`` > 0; see ``assign_classes``).

    With ``out_dir``: checkpoints every ``checkpoint_every`` (the last ``keep_checkpoints`` kept), resume from
    the latest one, and the generator exported to ``out_dir/generator`` at the end (the EMA copy of G when
    ``train.ema_decay`` > 0). The device is ``device``, else
    a GPU exactly when ``train.use_gpu``. Losses are read from the device only every ``train.log_every`` iterations.
    """
    t = cfg.train
    size = cfg.model.image_size
    assert volumes.ndim == 4 and volumes.shape[1:] == (size, size, size), (
        f"volumes must be (N, {size}, {size}, {size}), got {volumes.shape}"
    )
    if cfg.model.num_classes and (labels is None or len(labels) != len(volumes)):
        raise ValueError(f"model.num_classes={cfg.model.num_classes}: pass one class label per volume")
    dev = select_device(cfg, device)
    out = Path(out_dir) if out_dir else None
    if out:
        refuse_foreign_run(out)
    latest = checkpoints(out)[-1] if out and resume and checkpoints(out) else None
    s = loop.start(cfg, dev, checkpoint=latest)
    if latest is not None:
        log(f"resumed from {latest} at iteration {s.start_it}")
    data = batches(volumes, t.batch_size, s.rng, labels if cfg.model.num_classes else None)
    result = TrainResult(nets=s.nets, iterations=s.start_it, start_iteration=s.start_it)
    t0 = time.perf_counter()
    for w in loop.windows(s, data):
        row = {"iteration": w.done, **{k: v for k, v in w.metrics.items() if k not in NOT_LOGGED}}
        result.history.append(row)
        log(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
        if out and w.checkpoint:
            save_checkpoint(out / f"checkpoint_{w.done:06d}", cfg, s.nets, s.opts, w.done,
                            loop.checkpoint_state(s, w.done, [loop.rng_states(s)], "local"))
            for old in checkpoints(out)[: -t.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        result.iterations = w.done
    result.seconds = time.perf_counter() - t0
    if out:
        result.generator_path = save_generator(out / "generator", cfg, s.nets.eval_generator(),
                                               {"iterations": result.iterations, "ema": str(s.nets.g_ema is not None)})
    return result
