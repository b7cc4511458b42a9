"""``crfgan bench render``: halo-tiled vs one-pass full-volume rendering by G^H.

For each size (reference widths) one process per mode renders the same embedding A: ``one-pass`` (the
reference), ``tiled-global`` (equals one pass) and ``tiled-slab`` (per-tile statistics). Memory is the peak
above the baseline taken once A exists, so it counts the render's own working set plus the output volume.
"""

from __future__ import annotations

import time

from .table import emit
from .train_step import preset, warm_up_runtime
from .worker import peak_rss_bytes, rss_bytes, run_case, worker_main

MODES = ("one-pass", "tiled-global", "tiled-slab")


def measure(case: dict) -> dict:
    import torch

    from crfgan.config import load_config
    from crfgan.generator import Generator
    from crfgan.render import render_one_pass, render_tiled

    dev = torch.device(case["device"])
    cuda = dev.type == "cuda"
    cfg = load_config(preset(case["size"]))
    torch.manual_seed(0)
    g = Generator(cfg.model).to(dev).eval()
    with torch.no_grad():
        a = g.embedding(torch.randn(1, cfg.model.latent_dim, device=dev))
    warm_up_runtime(dev)
    base = rss_bytes()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_gpu = torch.cuda.memory_allocated()
    kw = {"slab": case["slab"], "halo": case["halo"]}
    t0 = time.perf_counter()
    with torch.no_grad():
        if case["mode"] == "one-pass":
            vol = render_one_pass(g.renderer, a)
        else:
            vol = render_tiled(g.renderer, a, norm_stats=case["mode"].split("-")[1], **kw)
    if cuda:
        torch.cuda.synchronize()
    sec = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated() - base_gpu) if cuda else peak_rss_bytes() - base
    out = {"seconds": sec, "peak_mb": peak / 2**20, "output_mb": vol.numel() * vol.element_size() / 2**20}
    if case["mode"] != "one-pass" and case["compare"]:
        with torch.no_grad():
            out["max_abs_diff"] = (vol - render_one_pass(g.renderer, a)).abs().max().item()
    return out


def add_arguments(p) -> None:
    p.add_argument("--size", default="128,256", help="comma-separated sizes (default 128,256)")
    p.add_argument("--slab", type=int, default=0, help="embedding slices per tile (default 0: E/16, as synthesis)")
    p.add_argument("--halo", type=int, default=1, help="halo in embedding slices (default 1)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--no-compare", action="store_true", help="skip the max-abs-difference check (saves memory)")


def run(args) -> None:
    import torch

    from crfgan.render import default_slab

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    for size in [int(s) for s in args.size.split(",")]:
        one = None
        for mode in MODES:
            case = {"size": size, "mode": mode, "slab": args.slab, "halo": args.halo, "device": device,
                    "compare": not args.no_compare}
            r = run_case(__name__, case)
            one = r if mode == "one-pass" else one
            tile = args.slab or default_slab(size // 4)
            row = {"size": size, "mode": mode, "slab": tile if mode != "one-pass" else None,
                   "halo": args.halo if mode != "one-pass" else None, **r}
            row["mem_vs_one_pass"] = r["peak_mb"] / one["peak_mb"]
            row["time_vs_one_pass"] = r["seconds"] / one["seconds"]
            rows.append(row)
            print(f"  {size}³ {mode}: {r['seconds']:.2f} s, {r['peak_mb']:.0f} MB", flush=True)
    emit(f"render ({device}; reference widths, batch 1; peak above the baseline with A computed)", rows, args.json)


if __name__ == "__main__":
    worker_main(measure)
