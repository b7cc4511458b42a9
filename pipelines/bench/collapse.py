"""``crfgan bench collapse``: does a training recipe leave mode collapse on procedural phantoms, within a budget?

One run: train a generator (the one training loop, ``crfgan.loop``, as ``crfgan train --local`` runs it) on N phantom
volumes (``phantom://N?size=S&seed=K`` prepared in-process exactly as ``crfgan preprocess`` prepares them:
``crfgan.volume.prepare_volume``; or on a shard folder with ``--shards``) until ``--iterations`` or the wall-clock
``--budget-s`` (training plus evaluation) or, with ``--budget-cpu-s``, once this process has used that many CPU
seconds (the one-core budget measured when several runs share the cores), and every ``--eval-every`` iterations score
``--samples`` volumes rendered from fixed latent seeds (the EMA copy of G when ``train.ema_decay`` > 0, and then also
G itself) against a held-out phantom set of another seed:

- ``quality_score`` and its terms (``crfgan.metrics.headline.assess``) and its real-vs-real ``floor`` (a second
  held-out set of a third seed against the same reference), with ``quality_vs_floor`` = score / floor;
- ``diversity_ratio`` = (1 − mean pairwise MS-SSIM of the samples) / (1 − that of the held-out set)
  (``crfgan.metrics.physics``);
- the lung volume fraction's sd over the samples vs over the held-out set (``crfgan.phantom.measure``);
- the training losses averaged over the window, this process's CPU seconds (``cpu_s``) and peak resident memory
  (``peak_rss_mb``: training data, networks, optimizers and the scoring, all in the one process) so far.

The JSON also records the ``machine`` (CPU model, cores, Python, torch): CPU seconds per iteration differ across
machines, and a seed's curve is reproducible bit for bit on one machine, not across machines (on 2026-12-07 another
machine's first scores differed in the 8th digit and the runs had parted by iteration 600).

The JSON (``--json``) and its curves PNG (same name, ``.png``: quality, diversity and losses against the iteration,
with the real-vs-real floor) are rewritten after every evaluation, so a run stopped by ``timeout`` keeps its curve.
``out_of_collapse`` is diversity_ratio ≥ 0.7 and quality_vs_floor ≤ 3 at the final evaluation (issue 16's bar).
Set ``torch`` threads with ``--threads`` (default 1: the one-core budget; pin the process with ``taskset``).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

# the "tiny widths" on top of the ct64 preset (reference CRF-GAN: channel nodes, no shared fakes)
TINY_WIDTHS = ("model.latent_dim=64", "model.base_channels=8", "model.d_channels=64")
DIVERSITY_BAR, QUALITY_BAR = 0.7, 3.0


def _positive_int(text: str) -> int:
    import argparse

    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return int(text)


def _non_negative_seconds(text: str) -> float:
    import argparse

    try:
        x = float(text)
    except ValueError:
        x = float("nan")
    if not math.isfinite(x) or x < 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0, got {text!r}")
    return x


def add_arguments(p) -> None:
    p.add_argument("--config", default="ct64", help="preset or YAML (default ct64)")
    p.add_argument("--no-tiny", action="store_true", help=f"do not apply the tiny widths ({' '.join(TINY_WIDTHS)})")
    p.add_argument("--train", type=int, default=200, help="training phantoms (default 200)")
    p.add_argument("--train-seed", type=int, default=0, help="phantom set seed of the training volumes (default 0)")
    p.add_argument("--shards", default="", help="train on this shard folder's train split instead of phantoms")
    p.add_argument("--held-out", type=int, default=16, help="held-out phantoms per real set (default 16)")
    p.add_argument("--held-out-seed", type=int, default=1,
                   help="seed of the held-out reference set; the floor's second set uses seed + 1 (default 1)")
    p.add_argument("--samples", type=int, default=16, help="volumes rendered per evaluation (default 16)")
    p.add_argument("--iterations", type=int, default=0, help="stop after this many iterations (0: train.iterations)")
    p.add_argument("--budget-s", type=_non_negative_seconds, default=1800.0,
                   help="stop training once this many seconds (training and evaluation) have passed (default 1800)")
    p.add_argument("--budget-cpu-s", type=_non_negative_seconds, default=0.0,
                   help="also stop once this process has used this many CPU seconds (training and evaluation): the "
                        "one-core budget when runs share cores (default 0: off)")
    p.add_argument("--eval-every", type=_positive_int, default=250, help="iterations between evaluations (default 250)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--name", default="", help="a label for the run in the JSON")
    p.add_argument("--json", metavar="PATH", help="write the figures as JSON and the curves as PATH with .png "
                   "(both rewritten after every evaluation)")
    p.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. train.r1_gamma=1 train.ema_decay=0.999")


def phantom_set(n: int, seed: int, cfg) -> np.ndarray:
    """``n`` phantoms of set ``seed`` at the config's size, prepared as preprocessing prepares them: (N, S, S, S)."""
    from crfgan.phantom import phantom_scan, volume_uri
    from crfgan.volume import prepare_volume

    s = cfg.model.image_size
    sp = phantom_spacing(cfg)
    return np.stack([prepare_volume(phantom_scan(volume_uri(i, s, seed, sp)), cfg) for i in range(n)]).astype(np.float32)


def phantom_spacing(cfg) -> float:
    """The phantoms' spacing: the config's, so a phantom fills the cube (1 mm when the config keeps native spacing)."""
    return cfg.data.spacing_mm or 1.0


def shard_set(uri: str, cfg) -> np.ndarray:
    from crfgan.shards import read_volumes

    vols = [np.asarray(r["volume"], np.float32) for r in read_volumes(uri, "train")]
    if not vols:
        raise ValueError(f"{uri}: no training volumes")
    return np.stack(vols)


def lung_fractions(vols, cfg) -> np.ndarray:
    from crfgan.phantom import measure, to_hu

    return np.array([measure(to_hu(v, cfg.data.ct_window))["lung_volume_fraction"] for v in vols])


class Scorer:
    """The real side, computed once: reference, floor, real pairwise MS-SSIM, real lung-fraction sd."""

    def __init__(self, held: np.ndarray, second: np.ndarray, cfg):
        from crfgan.metrics import compute as C
        from crfgan.metrics import headline as H
        from crfgan.metrics.seam import model_seam_geometry

        self.cfg, self.geometry = cfg, model_seam_geometry(cfg.model)
        self.window = tuple(float(v) for v in cfg.data.ct_window)
        self.ref = H.reference(held)
        self.floor = H.assess(self.ref, second, self.geometry, "ct", self.window)
        self.ms_real = C.diversity(held)
        self.lung_sd_real = float(lung_fractions(held, cfg).std())
        self.real_second_diversity = float((1 - C.diversity(second)) / max(1 - self.ms_real, 1e-9))

    def score(self, vols: np.ndarray) -> dict:
        from crfgan.metrics import compute as C
        from crfgan.metrics import headline as H

        a = H.assess(self.ref, vols, self.geometry, "ct", self.window)
        ms = C.diversity(vols)
        lung = lung_fractions(vols, self.cfg)
        keep = ("quality_score", "swd_fine", "intensity_shift_hu", "dup_ratio", "seam_score", "collapse_term",
                "intensity_term", "seam_term", "memorisation_ratio")
        out = {k: float(a[k]) for k in keep}
        out.update(quality_vs_floor=out["quality_score"] / max(self.floor["quality_score"], 1e-12),
                   diversity_ratio=float((1 - ms) / max(1 - self.ms_real, 1e-9)), ms_ssim=float(ms),
                   lung_fraction_sd=float(lung.std()), lung_fraction_mean=float(lung.mean()))
        return out


def _clean(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_clean(v) for v in x]
    return x


def train_and_score(args) -> dict:
    import torch

    from crfgan.config import load_config
    from crfgan.memory import peak_rss_bytes, pin_mmap_threshold
    from crfgan.metrics.curves import plot_curves
    from crfgan.metrics.quick import render_fixed
    from crfgan import loop
    from crfgan.trainer import batches
    from pipelines.bench.table import machine

    torch.set_num_threads(max(1, args.threads))
    pin_mmap_threshold()
    t_start, cpu0 = time.perf_counter(), time.process_time()
    over = ([] if args.no_tiny else list(TINY_WIDTHS)) + list(args.overrides)
    cfg = load_config(args.config, over)
    t = cfg.train
    iterations = args.iterations or t.iterations
    vols = shard_set(args.shards, cfg) if args.shards else phantom_set(args.train, args.train_seed, cfg)
    held = phantom_set(args.held_out, args.held_out_seed, cfg)
    second = phantom_set(args.held_out, args.held_out_seed + 1, cfg)
    scorer = Scorer(held, second, cfg)
    setup_s = time.perf_counter() - t_start
    spacing = phantom_spacing(cfg)  # the URIs say what crfgan preprocess would be given
    sp = "" if spacing == 1.0 else f"&spacing={spacing:g}"
    res = {"name": args.name or cfg.name, "config": args.config, "overrides": over, "iterations_target": iterations,
           "budget_s": args.budget_s, "budget_cpu_s": args.budget_cpu_s, "threads": args.threads,
           "data": args.shards or f"phantom://{args.train}?size={cfg.model.image_size}&seed={args.train_seed}{sp}",
           "held_out": f"phantom://{args.held_out}?size={cfg.model.image_size}&seed={args.held_out_seed}{sp} "
                       f"(floor: seed {args.held_out_seed + 1})",
           "n_train": int(len(vols)), "floor": {k: float(v) for k, v in scorer.floor.items()
                                               if isinstance(v, (int, float))},
           "real": {"ms_ssim": scorer.ms_real, "lung_fraction_sd": scorer.lung_sd_real,
                    "second_set_diversity_ratio": scorer.real_second_diversity},
           "setup_s": setup_s, "machine": machine(),  # a seed reproduces bit for bit on one machine only
           "curve": [], "done": False}

    def write():
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(_clean(res), indent=1))
            if res["curve"]:
                plot_curves(res["curve"], Path(args.json).with_suffix(".png"), title=f"{res['name']}: "
                            + (" ".join(args.overrides) or "paper recipe"),
                            floor={"quality_score": res["floor"]["quality_score"],
                                   "diversity_ratio": res["real"]["second_set_diversity_ratio"]},
                            diversity_bar=DIVERSITY_BAR)

    write()
    t.iterations = iterations
    t.log_every = t.checkpoint_every = t.val_every = args.eval_every  # one window per evaluation
    s = loop.start(cfg, torch.device("cpu"))
    nets = s.nets
    data = batches(vols, t.batch_size, s.rng)
    train_s = eval_s = 0.0
    timing = ("iteration", "its_per_s", "its_per_s_steady", "samples_per_s", "samples_seen", "start_iteration",
              "world_size", "data_wait_frac")

    def evaluate(done: int, losses: dict) -> dict:
        nonlocal eval_s
        t0 = time.perf_counter()
        row = {"iteration": done, "train_s": train_s, **{k: v for k, v in losses.items() if k not in timing}}
        row.update(scorer.score(render_fixed(nets.eval_generator(), cfg, args.samples)))
        if nets.g_ema is not None:
            raw = scorer.score(render_fixed(nets.g, cfg, args.samples))
            row.update({f"g_{k}": raw[k] for k in ("quality_score", "quality_vs_floor", "diversity_ratio",
                                                   "lung_fraction_sd")})
        eval_s += time.perf_counter() - t0
        row["elapsed_s"] = time.perf_counter() - t_start
        row["cpu_s"] = time.process_time() - cpu0  # this process's CPU time: the one-core budget under contention
        row["peak_rss_mb"] = peak_rss_bytes() / 2**20  # this process's peak so far: data, nets, optimizers, scoring
        res["curve"].append(row)
        write()
        return row

    evaluate(0, {})
    done = 0
    def spent() -> bool:
        return (time.perf_counter() - t_start >= args.budget_s
                or 0 < args.budget_cpu_s <= time.process_time() - cpu0)

    for w in loop.windows(s, data, stop=spent):
        train_s += (w.done - done) / max(w.metrics["its_per_s"], 1e-12)  # the window's training time
        done = w.done
        evaluate(done, w.metrics)
    last = res["curve"][-1]
    res.update(done=True, iterations=done, train_s=train_s, eval_s=eval_s, total_s=time.perf_counter() - t_start,
               cpu_s=time.process_time() - cpu0,
               s_per_iteration=train_s / max(done, 1), final=last,
               out_of_collapse=bool(last["diversity_ratio"] >= DIVERSITY_BAR
                                    and last["quality_vs_floor"] <= QUALITY_BAR))
    write()
    return res


def main_table(res: dict) -> str:
    rows = [f"{'iter':>6} {'train_s':>8} {'div':>6} {'q':>8} {'q/floor':>8} {'lung_sd':>8} {'d_loss':>7} {'g_loss':>7}"]
    for r in res["curve"]:
        rows.append(f"{r['iteration']:>6} {r['train_s']:>8.0f} {r['diversity_ratio']:>6.2f} {r['quality_score']:>8.2f} "
                    f"{r['quality_vs_floor']:>8.2f} {r['lung_fraction_sd']:>8.3f} {r.get('d_loss', float('nan')):>7.3f} "
                    f"{r.get('g_loss', float('nan')):>7.3f}")
    rows.append(f"floor quality_score {res['floor']['quality_score']:.2f}; real lung_fraction_sd "
                f"{res['real']['lung_fraction_sd']:.3f}; out_of_collapse {res['out_of_collapse']}")
    return "\n".join(rows)


def run(args) -> None:
    print(main_table(train_and_score(args)))
