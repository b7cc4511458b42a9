"""``crfgan bench train-step``: peak memory and seconds per training iteration, CRF-GAN vs HA-GAN.

Each case runs in a fresh process at the reference widths of the size (``ct64``, ``ct128``, … presets; ``tiny``
at 32³). Rows: one per (arch, variant, size, batch); then ratios crfgan/hagan, the speed-up of the shared-fake
step over the reference sequence, and our figures against the published reference code's (measured on this kind
of 2-core machine: see ``PUBLISHED``).
"""

from __future__ import annotations

import time

from .table import emit
from .worker import peak_rss_bytes, rss_bytes, run_case, worker_main

# One iteration of the published code (its train.py sequence, on CPU, batch 2) on a 2-core machine like ours:
# (seconds per iteration, peak RSS in GB). These are the figures the project was given for the published code
# (github.com/mahshid1998/CRF-GAN); they are not re-measured by this benchmark.
PUBLISHED = {("crfgan", 128): (7.8, 1.8), ("hagan", 128): (9.7, 2.2), ("crfgan", 256): (56.0, 4.2), ("hagan", 256): (66.0, 4.9)}

VARIANTS = {
    "shared": ["train.share_fakes=true"],  # ours: one G forward feeds the D, G and CRF sub-steps
    "reference-seq": ["train.share_fakes=false"],  # fresh noise and a G forward per sub-step, as the reference
}


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
    overrides = [f"model.arch={case['arch']}", f"train.batch_size={case['batch']}", *VARIANTS[case["variant"]]]
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
    p.add_argument("--variants", default="shared,reference-seq", help="crfgan step variants: shared, reference-seq")
    p.add_argument("--iters", type=int, default=3, help="timed iterations after one warm-up (default 3)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"], help="autocast dtype (GPU rows)")
    p.add_argument("--checkpointing", action="store_true", help="activation checkpointing in G^A")
    p.add_argument("--channels-last", action="store_true", help="channels_last_3d memory format (train.channels_last)")
    p.add_argument("--compile", action="store_true", help="torch.compile every network (train.compile)")
    p.add_argument("--hagan-plain", action="store_true",
                   help="run the HA-GAN rows in fp32 without checkpointing (the published baseline), whatever --amp says")


def run(args) -> None:
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    for size in [int(s) for s in args.size.split(",")]:
        for arch in args.arch.split(","):
            variants = args.variants.split(",") if arch == "crfgan" else ["reference-seq"]
            for variant in variants:
                plain = arch == "hagan" and getattr(args, "hagan_plain", False)
                amp, ckpt = ("none", False) if plain else (args.amp, args.checkpointing)
                fmt = {} if plain else {"channels_last": getattr(args, "channels_last", False),
                                        "compile": getattr(args, "compile", False)}
                case = {"arch": arch, "variant": variant, "size": size, "batch": args.batch, "iters": args.iters,
                        "device": device, "amp": amp, "checkpointing": ckpt, **fmt}
                r = run_case(__name__, case)
                rows.append({"arch": arch, "variant": variant, "size": size, "batch": args.batch, "device": device,
                             "amp": amp, "ckpt": ckpt, **fmt, **r})
                print(f"  {arch} {variant} {size}³: {r['s_per_iter']:.3f} s/iter, {r['peak_mb']:.0f} MB", flush=True)
    mem = "CUDA max_memory_allocated" if device == "cuda" else "peak RSS above the process baseline"
    emit(f"train-step ({device}; peak_mb = {mem})", rows, args.json,
         extra={"ratios": ratios(rows), "published": published(rows)})
    emit("ratios (same run)", ratios(rows))
    if device == "cpu":
        emit("vs the published reference code (its figures, measured on a 2-core machine of this kind)", published(rows))


def _find(rows, **kw):
    return next((r for r in rows if all(r[k] == v for k, v in kw.items())), None)


def ratios(rows: list[dict]) -> list[dict]:
    out = []
    for size in sorted({r["size"] for r in rows}):
        c = _find(rows, size=size, arch="crfgan", variant="shared") or _find(rows, size=size, arch="crfgan")
        h, ref = _find(rows, size=size, arch="hagan"), _find(rows, size=size, arch="crfgan", variant="reference-seq")
        if c and h:
            out.append({"size": size, "ratio": "crfgan/hagan peak memory", "value": c["peak_mb"] / h["peak_mb"]})
            out.append({"size": size, "ratio": "hagan/crfgan s per iter (speed-up)", "value": h["s_per_iter"] / c["s_per_iter"]})
        if c and ref and c is not ref:
            out.append({"size": size, "ratio": "crfgan reference-seq/shared s per iter (speed-up)",
                        "value": ref["s_per_iter"] / c["s_per_iter"]})
    return out


def published(rows: list[dict]) -> list[dict]:
    out = []
    for r in rows:
        pub = PUBLISHED.get((r["arch"], r["size"]))
        if pub and r["batch"] == 2 and r["device"] == "cpu" and (r["arch"] == "hagan" or r["variant"] == "shared"):
            out.append({"arch": r["arch"], "size": r["size"], "ours_s": r["s_per_iter"], "published_s": pub[0],
                        "speed_up": pub[0] / r["s_per_iter"], "ours_peak_rss_gb": r["peak_rss_mb"] / 1024,
                        "published_peak_rss_gb": pub[1], "rss_ratio": r["peak_rss_mb"] / 1024 / pub[1]})
    return out


if __name__ == "__main__":
    worker_main(measure)
