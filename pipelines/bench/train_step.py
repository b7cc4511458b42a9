"""``crfgan bench train-step``: peak memory and seconds per training iteration, CRF-GAN vs HA-GAN, like for like.

Each case runs in a fresh process at the reference widths of the size (``ct64``, ``ct128``, … presets; ``tiny``
at 32³). A case is (arch, step variant, execution options, size, batch):
- variants: ``reference`` (the published step sequence: a fresh G pass per sub-step, ``train.share_fakes=false``)
  and ``shared`` (one G pass feeds every sub-step: an algorithm change, see ``crfgan/step.py``);
- options: ``fp32`` (no autocast, no checkpointing: the published baseline) always; with ``--amp``,
  ``--checkpointing``, ``--channels-last`` or ``--compile`` also a row per arch and variant with those options.
Ratios compare rows of this run only, each labelled with what it compares: CRF-GAN/HA-GAN with the same variant and
options on both sides (like for like); shared vs reference (algorithm change); options vs fp32 (same model and
step); and, when options are given, CRF-GAN with them vs HA-GAN fp32 (different options, labelled as such).
Figures measured elsewhere (the published code's timings) are in the README, never printed here.
"""

from __future__ import annotations

import time

from .table import emit
from .worker import peak_rss_bytes, rss_bytes, run_case, worker_main

VARIANTS = {
    "reference": ["train.share_fakes=false"],  # fresh noise and a G forward per sub-step, as the published code
    "shared": ["train.share_fakes=true"],  # one G forward feeds the D, G and CRF sub-steps
}
ALIASES = {"reference-seq": "reference"}


def preset(size: int) -> str:
    return "tiny" if size == 32 else f"ct{size}"


def measure(case: dict) -> dict:
    import numpy as np
    import torch

    from crfgan.config import load_config
    from crfgan.memory import pin_mmap_threshold
    from crfgan.models import apply_execution_options, build_networks, build_optimizers
    from crfgan.step import Amp, train_step

    torch.manual_seed(0)
    cuda = case["device"] == "cuda"
    dev = torch.device(case["device"])
    overrides = [f"model.arch={case['arch']}", f"train.batch_size={case['batch']}", *VARIANTS[case["variant"]],
                 "model.crf.nodes=channels"]  # the paper's CRF whatever the preset
    overrides += [f"train.amp={case['amp']}", f"model.activation_checkpointing={case['checkpointing']}",
                  f"train.channels_last={case.get('channels_last', False)}", f"train.compile={case.get('compile', False)}"]
    cfg = load_config(preset(case["size"]), overrides)
    s = cfg.model.image_size
    real = (torch.rand(case["batch"], 1, s, s, s) * 2 - 1).to(dev)
    if not cuda:
        pin_mmap_threshold()  # as the trainers do on CPU
    warm_up_runtime(dev)
    base = rss_bytes()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base_gpu = torch.cuda.memory_allocated()
    nets = apply_execution_options(cfg, build_networks(cfg).to(dev).train())
    opts = build_optimizers(cfg, nets)
    amp = Amp(cfg.train.amp, dev)
    rng = np.random.default_rng(0)
    if cfg.model.arch == "crfgan":
        with torch.no_grad():  # a non-zero W so the CRF's pairwise work is exercised as after training starts
            nets.crf.W.fill_(0.01)
    train_step(nets, opts, real, 0, cfg, rng, amp)  # warm-up (allocator, Adam state)
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for it in range(case["iters"]):
        train_step(nets, opts, real, it + 1, cfg, rng, amp)
    if cuda:
        torch.cuda.synchronize()
    sec = (time.perf_counter() - t0) / case["iters"]
    counts = nets.param_counts()
    return {
        "s_per_iter": sec,
        "peak_mb": (torch.cuda.max_memory_allocated() - base_gpu if cuda else peak_rss_bytes() - base) / 2**20,
        "peak_rss_mb": peak_rss_bytes() / 2**20,
        "params_m": sum(counts.values()) / 1e6,
        "params": " ".join(f"{k}={v / 1e6:.2f}" for k, v in counts.items()),
    }


def warm_up_runtime(dev) -> None:
    """Load the conv/GroupNorm/fused-Adam kernels and thread pools on toy tensors, so the process baseline
    includes PyTorch's own fixed cost and the peak above it is the model's."""
    import torch

    conv = torch.nn.Sequential(torch.nn.Conv3d(1, 8, 3, padding=1), torch.nn.GroupNorm(8, 8)).to(dev)
    opt = torch.optim.Adam(conv.parameters(), fused=True)
    torch.nn.functional.interpolate(conv(torch.rand(2, 1, 8, 8, 8, device=dev)), scale_factor=2).sum().backward()
    opt.step()


def add_arguments(p) -> None:
    p.add_argument("--size", default="64,128", help="comma-separated sizes (32, 64, 128, 256, 512); default 64,128")
    p.add_argument("--batch", type=int, default=2, help="batch size (default 2)")
    p.add_argument("--arch", default="crfgan,hagan", help="comma-separated archs (default crfgan,hagan)")
    p.add_argument("--variants", default="reference,shared",
                   help="step variants for both archs: reference (the published sequence), shared (default both)")
    p.add_argument("--iters", type=int, default=3, help="timed iterations after one warm-up (default 3)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"],
                   help="autocast dtype of the extra option rows (GPU); fp32 rows are always run")
    p.add_argument("--checkpointing", action="store_true", help="option rows: activation checkpointing in G^A")
    p.add_argument("--channels-last", action="store_true", help="option rows: channels_last_3d (train.channels_last)")
    p.add_argument("--compile", action="store_true", help="option rows: torch.compile every network (train.compile)")


def option_sets(args) -> dict[str, dict]:
    """``fp32`` (the published baseline) plus, when any option is given, one labelled set with them."""
    fp32 = {"amp": "none", "checkpointing": False, "channels_last": False, "compile": False}
    opts = {"amp": args.amp, "checkpointing": args.checkpointing,
            "channels_last": getattr(args, "channels_last", False), "compile": getattr(args, "compile", False)}
    sets = {"fp32": fp32}
    if opts != fp32:
        parts = [opts["amp"] if opts["amp"] != "none" else "fp32"]
        parts += [short for key, short in (("checkpointing", "ckpt"), ("channels_last", "cl"), ("compile", "compile"))
                  if opts[key]]
        label = "+".join(parts)
        sets[label] = opts
    return sets


def run(args) -> None:
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    variants = [ALIASES.get(v, v) for v in args.variants.split(",")]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant {unknown[0]!r}; valid: {', '.join(VARIANTS)}")
    rows = []
    for size in [int(s) for s in args.size.split(",")]:
        for options, opts in option_sets(args).items():
            for variant in variants:
                for arch in args.arch.split(","):
                    case = {"arch": arch, "variant": variant, "size": size, "batch": args.batch, "iters": args.iters,
                            "device": device, **opts}
                    r = run_case(__name__, case)
                    rows.append({"arch": arch, "variant": variant, "options": options, "size": size,
                                 "batch": args.batch, "device": device, **r})
                    print(f"  {arch} {variant} {options} {size}³: {r['s_per_iter']:.3f} s/iter, {r['peak_mb']:.0f} MB",
                          flush=True)
    mem = "CUDA max_memory_allocated" if device == "cuda" else "peak RSS above the process baseline"
    emit(f"train-step ({device}; peak_mb = {mem})", rows, args.json, extra={"ratios": ratios(rows)})
    emit("ratios (rows of this run)", ratios(rows))


def _find(rows, **kw):
    return next((r for r in rows if all(r[k] == v for k, v in kw.items())), None)


def _pair(out, size, what, num, den):
    """``num`` (the subject) against ``den`` (the baseline): speed-up and peak-memory ratio."""
    out.append({"size": size, "compares": what, "speed_up": den["s_per_iter"] / num["s_per_iter"],
                "peak_mem_ratio": num["peak_mb"] / den["peak_mb"]})


def ratios(rows: list[dict]) -> list[dict]:
    """Each row: ``speed_up`` = baseline s/iter ÷ subject s/iter, ``peak_mem_ratio`` = subject ÷ baseline."""
    out: list[dict] = []
    for size in sorted({r["size"] for r in rows}):
        at = [r for r in rows if r["size"] == size]
        opts = sorted({r["options"] for r in at})
        variants = sorted({r["variant"] for r in at})
        for o in opts:  # like for like: same variant and options on both sides
            for v in variants:
                c, h = _find(at, arch="crfgan", variant=v, options=o), _find(at, arch="hagan", variant=v, options=o)
                if c and h:
                    _pair(out, size, f"crfgan vs hagan, both {v} {o} (like for like)", c, h)
        for arch in sorted({r["arch"] for r in at}):  # algorithm change: shared fakes vs the reference sequence
            for o in opts:
                sh = _find(at, arch=arch, variant="shared", options=o)
                ref = _find(at, arch=arch, variant="reference", options=o)
                if sh and ref:
                    _pair(out, size, f"{arch} shared vs reference, {o} (algorithm change)", sh, ref)
            for v in variants:  # execution options vs fp32: same model, same step
                for o in opts:
                    fast, base = _find(at, arch=arch, variant=v, options=o), _find(at, arch=arch, variant=v, options="fp32")
                    if o != "fp32" and fast and base:
                        _pair(out, size, f"{arch} {v}: {o} vs fp32 (same step)", fast, base)
        for o in opts:  # our options against the published baseline: NOT like for like, and labelled so
            c = _find(at, arch="crfgan", variant="reference", options=o)
            h = _find(at, arch="hagan", variant="reference", options="fp32")
            if o != "fp32" and c and h:
                _pair(out, size, f"crfgan reference {o} vs hagan reference fp32 (different options)", c, h)
    return out


if __name__ == "__main__":
    worker_main(measure)
