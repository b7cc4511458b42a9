"""``crfgan bench preprocess``: Ray Data pipeline vs a plain single-process loop, and memory as inputs grow 10×.

The collection is generated into a temp folder from the shipped scans (CT, FLAIR, MNI T1): a few distinct
augmentations (flip, intensity scale and offset, resampled to 128³ or 256³; every 5th volume is 256³) written as
int16 NIfTI, then copied under new names up to ``--volumes``. Both contenders do the same work per input —
``process_unit`` (read, RAS, intensity, fit, low-res, staging Parquet) and then the same shard packing; the loop runs
them one after another in a fresh child process (timed from inside, after its imports and the same 2-volume
warm-up), the pipeline is ``pipelines.preprocess.run`` on the local Ray (started before timing, warmed up on 2
volumes). Memory is the peak RSS of the driver and the peak summed RSS of Ray worker
processes (``ray::*`` descendants of the driver; shared pages count in every process), sampled every 0.25 s,
over ``--repeats`` timed repeats, interleaved across the runs (the fastest time is reported: the box may be
shared), for ``--volumes``/10 and ``--volumes`` inputs. ``cpu_s_per_volume`` (driver + Ray processes) shows the
work itself, free of contention. The loop uses torch's intra-op threads for its interpolations; Ray workers run
with one thread each (num_cpus=1).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from pipelines.bench.table import emit
from pipelines.bench.worker import Sampler
from crfgan.config import load_config
from crfgan.io import load_scan



def generate(folder: Path, n: int, sizes=(128, 256), seed: int = 0, scans: list[str] | None = None) -> list[Path]:
    """``n`` NIfTI volumes from ``scans`` (default: the scans shipped in the package): distinct augmentations per
    (scan, size), then copies under new names."""
    from crfgan.data import shipped_scans

    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    base = [Path(p) for p in (scans or shipped_scans())]
    distinct: dict[tuple, Path] = {}
    out = []
    for i in range(n):
        size = sizes[-1] if i % 5 == 4 else sizes[0]
        key = (i % len(base), size, (i // len(base)) % 2)  # two augmentations per scan and size
        if key not in distinct:
            scan = load_scan(base[key[0]])
            t = torch.from_numpy(scan.array)[None, None]
            vol = F.interpolate(t, size=(size,) * 3, mode="trilinear", align_corners=False)[0, 0].numpy()
            if key[2]:
                vol = vol[::-1] * rng.uniform(0.9, 1.1) + rng.uniform(-20, 20)
            extent = np.array(scan.shape) * scan.spacing / size
            p = folder / f"aug-{key[0]}-{size}-{key[2]}.nii.gz"
            nib.save(nib.Nifti1Image(np.round(vol).astype(np.int16), np.diag([*extent, 1.0])), p)
            distinct[key] = p
        dst = folder / f"vol-{i:04d}-{size}.nii.gz"
        shutil.copy(distinct[key], dst)
        out.append(dst)
    for p in distinct.values():
        p.unlink()
    return out


class PeakMemory(Sampler):
    """Peak RSS of this process and of its Ray worker processes (``ray::…`` descendants), sampled in a thread."""

    def __init__(self, interval: float = 0.25):
        import psutil

        super().__init__(interval)
        self.psutil, self.driver, self.workers = psutil, 0, 0
        self.me = psutil.Process()

    def sample(self):
        self.driver = max(self.driver, self.me.memory_info().rss)
        total = 0
        for p in self.me.children(recursive=True):  # only this driver's Ray (other sessions may share the box)
            try:
                if p.name().startswith("ray::"):
                    total += p.memory_info().rss
            except self.psutil.Error:
                continue
        self.workers = max(self.workers, total)

    def cpu_seconds(self) -> float:
        """user + system CPU seconds of this process and its descendants (Ray workers persist between runs)."""
        total = 0.0
        for p in [self.me, *self.me.children(recursive=True)]:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except self.psutil.Error:
                continue
        return total

    def __enter__(self):
        self.cpu0 = self.cpu_seconds()
        return super().__enter__()

    def __exit__(self, *exc):
        super().__exit__(*exc)
        self.cpu = self.cpu_seconds() - self.cpu0


def run_loop(inputs: list[str], out: str, cfg) -> int:
    """The same per-input work and shard packing as the pipeline, in one process, one input after another."""
    from crfgan.shards import filesystem, plan_shards, write_shard
    from pipelines import preprocess, sources

    metas = []
    for u in sources.discover(inputs):
        if u["kind"] == "refused":
            continue
        r = preprocess.process_unit(u, cfg, out, "")
        metas += [{**m, "staging": r["staging"]} for m in r["volumes"]]
    fs, root = filesystem(out)
    for p in plan_shards(metas, cfg.data.shard_target_mb):
        write_shard(fs, root, p)
    return len(metas)


def _loop_in_child(inputs: str, out: str, config: str, warm: str) -> dict:
    """``run_loop`` in a fresh Python process (imports and a warm-up on ``warm`` done before its clock starts), so
    the loop's heap never inflates the driver's memory figures of the Ray runs interleaved with it; the child reports
    its own wall time, CPU seconds and peak RSS."""
    code = ("import json, sys, time; from crfgan.config import load_config; from crfgan.memory import peak_rss_bytes; "
            "from pipelines.bench import preprocess as b; "
            "cfg = load_config(sys.argv[3]); b.run_loop([sys.argv[4]], sys.argv[2] + '-warm', cfg); "
            "t0 = time.perf_counter(); c0 = time.process_time(); "
            "n = b.run_loop([sys.argv[1]], sys.argv[2], cfg); "
            "print(json.dumps({'volumes': n, 'seconds': time.perf_counter() - t0, 'cpu_s': time.process_time() - c0, "
            "'peak_rss': peak_rss_bytes()}))")
    res = subprocess.run([sys.executable, "-c", code, inputs, out, config, warm], capture_output=True, text=True,
                         timeout=3600, check=False)
    if res.returncode:
        raise RuntimeError(f"single-process loop failed ({res.returncode}): {res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _measure(cases: dict[str, tuple[list, list[Path]]]) -> dict[str, dict]:
    """``{name: (fns, files)}``: run the i-th repeat of every case, then the (i+1)-th … (interleaved, so a load
    change on a shared box hits every case alike); keep each case's fastest time and its peak memory over repeats."""
    raw = {name: {"times": [], "cpus": [], "driver": 0, "workers": 0} for name in cases}
    for i in range(max(len(fns) for fns, _ in cases.values())):
        for name, (fns, files) in cases.items():
            if i >= len(fns):
                continue
            r = raw[name]
            with PeakMemory() as mem:
                t0 = time.perf_counter()
                ok = fns[i]()
                dt = time.perf_counter() - t0
            if isinstance(ok, dict):  # measured by a child process itself (see _loop_in_child)
                ok, dt, cpu, driver, workers = ok["volumes"], ok["seconds"], ok["cpu_s"], ok["peak_rss"], None
            else:
                cpu, driver, workers = mem.cpu, mem.driver, mem.workers
            assert ok == len(files), f"{name}: {ok} of {len(files)} volumes prepared"
            r["times"].append(dt)
            r["cpus"].append(cpu)
            r["driver"] = max(r["driver"], driver)
            r["workers"] = None if workers is None else max(r["workers"] or 0, workers)
    rows = {}
    for name, (_, files) in cases.items():
        r, mb = raw[name], sum(f.stat().st_size for f in files) / 2**20
        dt = min(r["times"])
        rows[name] = {"run": name, "volumes": len(files), "input_MB": round(mb, 1), "seconds": dt,
                      "all_seconds": " ".join(f"{t:.1f}" for t in r["times"]), "volumes_per_s": len(files) / dt,
                      "input_MB_per_s": mb / dt, "cpu_s_per_volume": min(r["cpus"]) / len(files),
                      "peak_driver_MB": r["driver"] / 2**20,
                      "peak_workers_MB": None if r["workers"] is None else r["workers"] / 2**20}
    return rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--volumes", type=int, default=50, help="collection size (the memory run uses 1/10)")
    parser.add_argument("--config", default="ct128", help="preset or YAML for the prepared cube (default ct128)")
    parser.add_argument("--sizes", default="128,256", help="input cube edges of the generated collection")
    parser.add_argument("--repeats", type=int, default=2, help="timed repeats per run; the fastest is reported")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the rows as JSON")
    parser.add_argument("--workdir", default=None, help="where to generate (default: a temp folder, removed after)")
    parser.add_argument("--scans", default=None, metavar="PATHS",
                        help="comma-separated NIfTI scans the collection is made from (default: the shipped scans)")


def run(args: argparse.Namespace) -> None:
    from pipelines import preprocess
    from pipelines.runtime import ensure_ray

    cfg = load_config(args.config)
    sizes = tuple(int(s) for s in str(args.sizes).split(","))
    n_big = max(2, args.volumes)
    n_small = max(1, n_big // 10)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="crfgan-bench-pre-"))
    try:
        t0 = time.perf_counter()
        files = generate(work / "in_big", n_big, sizes, scans=args.scans.split(",") if args.scans else None)
        small = work / "in_small"
        small.mkdir()
        for f in files[:n_small]:
            shutil.copy(f, small / f.name)
        gen_s = time.perf_counter() - t0
        ray = ensure_ray()
        ray.data.DataContext.get_current().enable_progress_bars = False
        warm = work / "in_warm"
        warm.mkdir()
        for f in files[:2]:
            shutil.copy(f, warm / f.name)
        preprocess.run([str(warm)], str(work / "out_warm"), cfg)  # start workers, import torch/nibabel in them

        def ray_run(folder, out):
            return lambda: preprocess.run([str(folder)], str(work / out), cfg)["volumes_ok"]

        def loop_run(out):
            return lambda: _loop_in_child(str(work / "in_big"), str(work / out), args.config, str(warm))

        reps = range(max(1, args.repeats))
        rows = list(_measure({
            "small": ([ray_run(small, f"out_ray_small{i}") for i in reps], sorted(small.iterdir())),
            "big": ([ray_run(work / "in_big", f"out_ray_big{i}") for i in reps], files),
            "loop": ([loop_run(f"out_loop{i}") for i in reps], files),
        }).values())
        small_r, big_r, loop_r = rows
        small_r["run"], big_r["run"] = f"ray data ({n_small})", f"ray data ({n_big})"
        loop_r["run"] = f"single-process loop ({n_big})"
        big_r["speedup_vs_loop"] = loop_r["seconds"] / big_r["seconds"]
        big_r["driver_mem_ratio_vs_small"] = big_r["peak_driver_MB"] / small_r["peak_driver_MB"]
        big_r["worker_mem_ratio_vs_small"] = big_r["peak_workers_MB"] / max(1e-9, small_r["peak_workers_MB"])
        title = (f"preprocess: Ray Data vs single-process loop, {cfg.name} (S={cfg.model.image_size}), inputs "
                 f"{'/'.join(map(str, sizes))}³ int16 NIfTI, {os.cpu_count()} CPUs")
        load = os.getloadavg()[0]
        title += f", load avg {load:.1f} at the end"
        emit(title, rows, args.json, {"config": cfg.name, "generate_s": gen_s, "ray_resources": ray.cluster_resources()})
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)

