"""``crfgan bench train-step``: peak memory and seconds per training iteration, CRF-GAN vs HA-GAN, like for like.

Each case runs in a fresh process at the reference widths of the size (``ct64``, ``ct128``, … presets; ``tiny``
at 32³). A case is (arch, step variant, execution options, size, batch):
- variants: ``reference`` (the published step sequence: a fresh G pass per sub-step, ``train.share_fakes=false``)
  and ``shared`` (one G pass feeds every sub-step: an algorithm change, see ``crfgan/step.py``);
- options: ``fp32`` (no autocast, no checkpointing; the default fused upsampling, ``crfgan.layers.up2_conv``)
  always; with ``--amp``, ``--checkpointing``, ``--channels-last`` or ``--compile`` also a row per arch and variant
  with those options.
- ``--published SRC``: the published CRF-GAN code's own networks and step at each size (``pipelines.bench.published``:
  a checkout, or a URL to clone, of mahshid1998/CRF-GAN, fetched at bench time), and our reference step once more
  with ``model.fused_upsample=false`` (``fp32-unfused``: the same convolutions as the published code).
Ratios compare rows of this run only, each labelled with what it compares: CRF-GAN/HA-GAN with the same variant and
options on both sides (like for like); shared vs reference (algorithm change); options vs fp32 (same model and
step); when options are given, CRF-GAN with them vs HA-GAN fp32 (different options, labelled as such); with
``--published``, our reference step vs the published one (same step sequence and widths). Figures measured
elsewhere are never printed here.
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
                  f"train.channels_last={case.get('channels_last', False)}", f"train.compile={case.get('compile', False)}",
                  f"model.fused_upsample={case.get('fused_upsample', True)}"]
    cfg = load_config(preset(case["size"]), overrides)
    s = cfg.model.image_size
    real = (torch.rand(case["batch"], 1, s, s, s) * 2 - 1).to(dev)
    if not cuda:
        pin_mmap_threshold()  # as the trainers do on CPU
    warm_up_runtime(dev)
    base, base_gpu = rss_bytes(), 0
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
    return timed(lambda it: train_step(nets, opts, real, it, cfg, rng, amp), case["iters"], dev, base,
                 base_gpu, nets.param_counts())


def timed(step, iters: int, dev, base: int, base_gpu: int, counts: dict[str, int]) -> dict:
    """A case's figures: ``step(0)`` as warm-up (allocator, Adam state), then ``step(1..iters)`` timed; peak memory
    above ``base`` (RSS) or ``base_gpu`` (CUDA allocated); ``counts`` the parameters per module."""
    import torch

    cuda = dev.type == "cuda"
    step(0)
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for it in range(iters):
        step(it + 1)
    if cuda:
        torch.cuda.synchronize()
    sec = (time.perf_counter() - t0) / iters
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
    p.add_argument("--published", default="", metavar="SRC",
                   help="also time the published CRF-GAN code's step (a checkout of mahshid1998/CRF-GAN, or a git URL "
                        "to clone it from, e.g. https://github.com/mahshid1998/CRF-GAN) beside our reference step, "
                        "and ours with model.fused_upsample=false")


def option_sets(args) -> dict[str, dict]:
    """``fp32`` (no autocast, checkpointing, channels_last or compile) plus, when any option is given, one labelled
    set with them."""
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
    sizes = [int(s) for s in args.size.split(",")]
    published = getattr(args, "published", "")
    root = None
    if published:
        from . import published as pub

        if "reference" not in variants or "crfgan" not in args.arch.split(","):
            raise SystemExit("bench train-step --published compares with our crfgan reference step: keep crfgan in "
                             "--arch and reference in --variants")
        root = pub.locate(published, sizes, pub.cache_dir())
    rows = []
    for size in sizes:
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
        if root is not None:
            base = {"size": size, "batch": args.batch, "iters": args.iters, "device": device}
            for arch, options, module, case in (
                    ("crfgan", "fp32-unfused", __name__, {"arch": "crfgan", "variant": "reference", **base,
                                                          **option_sets(args)["fp32"], "fused_upsample": False}),
                    ("published", "fp32", "pipelines.bench.published", {**base, "root": str(root)})):
                r = run_case(module, case)
                rows.append({"arch": arch, "variant": "reference", "options": options, "size": size,
                             "batch": args.batch, "device": device, **r})
                print(f"  {arch} reference {options} {size}³: {r['s_per_iter']:.3f} s/iter, {r['peak_mb']:.0f} MB",
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
        every = [r for r in rows if r["size"] == size]
        at = [r for r in every if r["arch"] != "published" and r["options"] != "fp32-unfused"]  # --published's own
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
        for o in opts:  # our options against HA-GAN fp32: NOT like for like, and labelled so
            c = _find(at, arch="crfgan", variant="reference", options=o)
            h = _find(at, arch="hagan", variant="reference", options="fp32")
            if o != "fp32" and c and h:
                _pair(out, size, f"crfgan reference {o} vs hagan reference fp32 (different options)", c, h)
        pub = _find(every, arch="published")
        for o, what in (("fp32", "fused upsampling"), ("fp32-unfused", "the same convolutions")):
            c = _find(every, arch="crfgan", variant="reference", options=o)
            if pub and c:
                _pair(out, size, f"crfgan reference {o} vs the published code (same step sequence and widths; {what})",
                      c, pub)
        c = _find(every, arch="crfgan", variant="reference", options="fp32")
        u = _find(every, arch="crfgan", variant="reference", options="fp32-unfused")
        if c and u:
            _pair(out, size, "crfgan reference: fp32 vs fp32-unfused (same function, fused upsampling)", c, u)
    return out


if __name__ == "__main__":
    worker_main(measure)
