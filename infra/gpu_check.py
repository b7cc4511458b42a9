#!/usr/bin/env python3
"""The GPU check: one script, each part in its own subprocess under its own timeout, results after every part.

    python3 infra/gpu_check.py --out DIR [--device cuda|cpu] [--tiny] [--budget-s 480]

Runs from a source checkout (``PYTHONPATH`` gets the repository root; no ``pip install -e``), with or without
MLflow (training runs with the no-MLflow switch, synthesis loads a checkpoint folder), without nibabel-dependent
inputs (the shards are synthetic phantoms written by ``pipelines.bench.feed.write_shards``) and without isal
(``synth.gzip=zlib``). Parts:

1. ``train-step``: the ``crfgan bench train-step`` cases (``pipelines.bench.train_step``, each in a fresh process):
   128³ and 256³, batch 4, the reference step sequence, CRF-GAN and HA-GAN, ``fp32`` and ``bf16+ckpt`` (bf16 autocast
   + activation checkpointing), then CRF-GAN ``fp32-unfused`` (``model.fused_upsample=false``: the two-step
   upsampling + conv, against fp32's fused one) and ``bf16+ckpt+cl`` (+ channels_last_3d) while time is left; its/s, peak CUDA
   memory and the bench's labelled ratios. ``torch.compile`` exists (``train.compile``) but is not run here: its
   compile time does not fit the budget.
2. ``ray-train``: Ray Train, 1 worker (1 GPU, NCCL, when --device cuda), phantom shards; a checkpoint, SIGKILL of
   the worker, restart from the checkpoint (``FailureConfig``), then ``crfgan train --no-mlflow`` with the same run
   name and more iterations (resume by name): the lineage must tile ``[0, iterations)`` exactly.
3. ``synthesize``: ``crfgan synthesize`` of a few volumes from part 2's checkpoint, tiled and one-pass
   (volumes/min), and the ``crfgan bench render`` cases for the peak memory of tiled vs one-pass rendering (at the
   checkpoint's size and, on a GPU, 256³).
4. ``budget``: what is left of the budget (the controlled-benchmark training at 128³ is not in this project yet).

``DIR/results.md`` (one Markdown table) and ``DIR/results.json`` are rewritten after each part; ``DIR/<part>.log``
holds each part's output. Exit status 0 when every part that ran passed. ``--tiny`` shrinks every part (32³ and the
tiny config) for a CPU check of the whole script (``tests/infra/test_gpu_check.py``).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PARTS = ("train-step", "ray-train", "synthesize", "budget")
SHARES = {"train-step": 0.5, "ray-train": 0.3, "synthesize": 0.2}  # of what is left when the part starts


# ------------------------------------------------------------------------------------------------ plans per mode
def plan(device: str, tiny: bool) -> dict:
    if tiny:
        return {"sizes": [32], "batch": 2, "iters": 1, "case_timeout": 300,
                "options": ["fp32", "bf16+ckpt"], "extra_options": ["fp32-unfused"],
                "train": {"config": "tiny", "size": 32, "volumes": 6, "iters1": 8, "iters2": 12, "every": 4},
                "synth": {"count": 2, "render_sizes": []}}
    return {"sizes": [128, 256], "batch": 4, "iters": 3, "case_timeout": 150,
            "options": ["fp32", "bf16+ckpt"], "extra_options": ["fp32-unfused", "bf16+ckpt+cl"],
            "train": {"config": "ct64", "size": 64, "volumes": 16, "iters1": 120, "iters2": 160, "every": 40},
            "synth": {"count": 8, "render_sizes": [256] if device == "cuda" else []}}


OPTION_SETS = {
    "fp32": {"amp": "none", "checkpointing": False, "channels_last": False, "compile": False},
    "bf16+ckpt": {"amp": "bf16", "checkpointing": True, "channels_last": False, "compile": False},
    "bf16+ckpt+cl": {"amp": "bf16", "checkpointing": True, "channels_last": True, "compile": False},
    # CRF-GAN only: the two-step nearest upsampling + conv, against fp32's fused one (same function; unmeasured on GPUs)
    "fp32-unfused": {"amp": "none", "checkpointing": False, "channels_last": False, "compile": False,
                     "fused_upsample": False},
}


def _write_part(path: str, doc: dict) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=2, default=str)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------ part 1
def part_train_step(args, out: str, deadline: float) -> None:
    from pipelines.bench.train_step import ratios
    from pipelines.bench.worker import run_case

    p = plan(args.device, args.tiny)
    doc = {"rows": [], "ratios": [], "failed": [], "skipped": [], "notes": [
        "torch.compile exists (train.compile, crfgan bench train-step --compile) and is not run here: its compile "
        "time does not fit the budget"]}
    order = [(s, o) for s in p["sizes"] for o in p["options"]] + [(s, o) for s in p["sizes"][-1:] for o in
                                                                   p["extra_options"]]
    for size, opt in order:
        for arch in ("crfgan",) if opt == "fp32-unfused" else ("crfgan", "hagan"):
            left = deadline - time.time()
            label = f"{arch} {opt} {size}³"
            if left < 20:
                doc["skipped"].append(f"{label}: no time left")
                continue
            case = {"arch": arch, "variant": "reference", "size": size, "batch": p["batch"], "iters": p["iters"],
                    "device": args.device, **OPTION_SETS[opt]}
            try:
                r = run_case("pipelines.bench.train_step", case, timeout=min(p["case_timeout"], left - 5))
                doc["rows"].append({"arch": arch, "variant": "reference", "options": opt, "size": size,
                                    "batch": p["batch"], "device": args.device, **r, "its_per_s": 1 / r["s_per_iter"]})
            except subprocess.TimeoutExpired:
                doc["failed"].append(f"{label}: timed out")
            except Exception as e:  # noqa: BLE001 — one case (e.g. out of memory) never loses the others
                doc["failed"].append(f"{label}: {str(e)[-600:]}")
            doc["ratios"] = ratios(doc["rows"])
            _write_part(out, doc)
    if doc["failed"] or not doc["rows"]:
        raise SystemExit(f"{len(doc['failed'])} train-step case(s) failed, {len(doc['rows'])} measured")


# ------------------------------------------------------------------------------------------------ part 2
def _checkpoints(run_dir: Path) -> list[tuple[dict, Path]]:
    """(state, folder) of every checkpoint folder of a Ray Train run, by iteration."""
    found = [(json.loads((d / "state.json").read_text()), d) for d in run_dir.glob("checkpoint_*")
             if (d / "state.json").is_file()]
    return sorted(found, key=lambda x: x[0]["iteration"])


def part_ray_train(args, out: str, deadline: float) -> None:
    from crfgan.config import load_config
    from pipelines.bench.feed import write_shards
    from pipelines.train import run as run_training

    p = plan(args.device, args.tiny)["train"]
    work = Path(args.out) / "work"
    shards = str(work / f"shards-{p['size']}")
    write_shards(shards, p["size"], p["volumes"], val=1)
    storage, status, name = work / "runs", work / "status", "gpu-check"
    common = [f"train.use_gpu={'true' if args.device == 'cuda' else 'false'}", "train.num_workers=1",
              f"train.checkpoint_every={p['every']}", f"train.log_every={p['every']}", f"train.val_every={p['iters1']}",
              "train.max_failures=2", f"train.storage_path={storage}", f"train.run_name={name}", "eval.quick_volumes=0"]
    if args.device == "cuda":
        common.append("train.amp=bf16")
    doc = {"config": p["config"], "size": p["size"], "device": args.device, "backend":
           "nccl" if args.device == "cuda" else "gloo", "shards": shards, "notes": [
               "stage 1: pipelines.train.run (what crfgan train --no-mlflow runs) with a status folder, its "
               "worker SIGKILLed after the first registered checkpoint; stage 2: crfgan train --no-mlflow with the "
               "same run name and more iterations",
               "eval.quick_volumes=0: the fd_ssl_quick extractor is not trained here (saves its start-up)"]}
    cfg = load_config(p["config"], [*common, f"train.iterations={p['iters1']}"])
    killed: dict = {}

    def killer():
        snapshot = storage / name / "checkpoint_manager_snapshot.json"
        while time.time() < deadline:
            try:
                registered = [r["metrics"]["iteration"] for r in json.loads(snapshot.read_text())["checkpoint_results"]]
            except (OSError, ValueError, KeyError):
                registered = []
            pids = [json.loads(open(f).read()) for f in glob.glob(str(status / "rank0-pid*.json"))]
            if registered and pids:
                killed.update(pid=pids[0]["pid"], registered=max(registered), at=time.time())
                os.kill(pids[0]["pid"], signal.SIGKILL)
                return
            time.sleep(0.1)

    th = threading.Thread(target=killer, daemon=True)
    th.start()
    t0 = time.time()
    s1 = run_training(cfg, shards, mlflow_enabled=False, status_dir=str(status))
    doc["stage1"] = {"seconds": time.time() - t0, "killed_pid": killed.get("pid"),
                     "killed_after_checkpoint": killed.get("registered"), "lineage": s1["state"]["lineage"],
                     "iteration": s1["metrics"].get("iteration"), "its_per_s_steady": s1["metrics"].get("its_per_s_steady"),
                     "peak_mem_mb": s1["metrics"].get("peak_mem_mb_max"),
                     "data_wait_frac": s1["metrics"].get("data_wait_frac")}
    _write_part(out, doc)
    from pipelines.cli import main as cli

    t0 = time.time()
    rc = cli(["train", "--data", shards, "--config", p["config"], "--no-mlflow", "--storage", str(storage),
              "--run-name", name, *common, f"train.iterations={p['iters2']}", f"train.val_every={p['iters2']}"])
    ckpts = _checkpoints(storage / name)
    state = ckpts[-1][0] if ckpts else None
    lineage = state["lineage"] if state else []
    tiles = bool(lineage) and lineage[0][0] == 0 and lineage[-1][1] == p["iters2"] and \
        all(a[1] == b[0] for a, b in zip(lineage, lineage[1:]))
    doc["stage2"] = {"seconds": time.time() - t0, "rc": rc, "iteration": state and state["iteration"],
                     "lineage": lineage, "checkpoint": str(ckpts[-1][1]) if ckpts else None}
    doc["checks"] = {"worker killed": bool(killed.get("pid")),
                     "restarted from the checkpoint": len(s1["state"]["lineage"]) == 2,
                     "exact iterations after kill": s1["state"]["iteration"] == p["iters1"],
                     "resume by name: exact iterations": bool(state) and state["iteration"] == p["iters2"],
                     "lineage tiles [0, iterations)": tiles, "three attempts": len(lineage) == 3}
    doc["checkpoint"] = doc["stage2"]["checkpoint"]
    _write_part(out, doc)
    bad = [k for k, v in doc["checks"].items() if not v]
    if bad or rc:
        raise SystemExit(f"ray-train checks failed: {', '.join(bad) or f'crfgan train exited {rc}'}")


# ------------------------------------------------------------------------------------------------ part 3
def part_synthesize(args, out: str, deadline: float) -> None:
    from pipelines.bench.worker import run_case
    from pipelines.cli import main as cli

    import importlib.util

    if importlib.util.find_spec("nibabel") is None:  # crfgan.synth builds the NIfTI header with nibabel
        raise SystemExit("crfgan synthesize writes NIfTI headers with nibabel, which is not importable here "
                         "(the offline bundle of infra/gpu_bundle.sh ships it)")
    p = plan(args.device, args.tiny)
    train = json.loads((Path(args.out) / "ray-train.json").read_text()) if (Path(args.out) / "ray-train.json").exists() \
        else {}
    ckpt = train.get("checkpoint")
    if not ckpt:
        raise SystemExit("no checkpoint from part ray-train: nothing to synthesize from")
    doc = {"checkpoint": ckpt, "jobs": [], "render": [], "failed": []}
    for tiled in ("true", "false"):
        dest = Path(args.out) / "work" / f"synthetic-tiled-{tiled}"
        rc = cli(["synthesize", "--model", ckpt, "--count", str(p["synth"]["count"]), "--out", str(dest),
                  "synth.gzip=zlib", "synth.gzip_level=1", f"synth.tiled={tiled}"])
        m = json.loads((dest / "manifest.json").read_text())
        doc["jobs"].append({"tiled": tiled == "true", "rc": rc, "written": m["counts"]["written"],
                            "device": m["device"], "actors": m["actors"], "vol_per_min": m["volumes_per_min"],
                            "steady_vol_per_min": 60 * m["counts"]["written"] / m["steady_s"] if m["steady_s"] else None,
                            "render_s": m["seconds"]["render_s"], "actor_peak_rss_mb": m["actor_peak_rss_mb"]})
        _write_part(out, doc)
        if rc or m["counts"]["written"] != p["synth"]["count"]:
            doc["failed"].append(f"synthesize tiled={tiled}: rc {rc}, {m['counts']}")
    for size in [train.get("size") or p["train"]["size"], *p["synth"]["render_sizes"]]:
        one = None
        for mode in ("one-pass", "tiled-global"):
            left = deadline - time.time()
            if left < 15:
                doc["failed"].append(f"render {size}³ {mode}: no time left")
                continue
            case = {"size": size, "mode": mode, "slab": 0, "halo": 1, "device": args.device, "compare": False}
            try:
                r = run_case("pipelines.bench.render", case, timeout=left - 5)
            except Exception as e:  # noqa: BLE001
                doc["failed"].append(f"render {size}³ {mode}: {str(e)[-400:]}")
                continue
            one = r if mode == "one-pass" else one
            doc["render"].append({"size": size, "mode": mode, **r,
                                  "mem_vs_one_pass": r["peak_mb"] / one["peak_mb"] if one else None})
            _write_part(out, doc)
    _write_part(out, doc)
    if doc["failed"]:
        raise SystemExit("; ".join(doc["failed"]))


CHILDREN = {"train-step": part_train_step, "ray-train": part_ray_train, "synthesize": part_synthesize}


# ------------------------------------------------------------------------------------------------ report
def machine(device: str) -> dict:
    info = {"python": platform.python_version(), "cpus": os.cpu_count(), "device": device}
    try:
        import torch

        info["torch"] = torch.__version__
        if device == "cuda" and torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except Exception as e:  # noqa: BLE001
        info["torch"] = f"unavailable: {e}"
    for mod in ("ray", "mlflow", "nibabel"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001
            info[mod] = None
    return info


def _f(v, nd=3) -> str:
    return "" if v is None else (f"{v:.{nd}g}" if isinstance(v, float) else str(v))


def table_rows(results: dict) -> list[tuple[str, str, str, str]]:
    rows = []
    for name, part in results["parts"].items():
        rows.append((name, "status", part["status"], f"{part.get('seconds', 0):.0f} s of {part.get('timeout_s', 0):.0f} s"
                     + (f"; {part['error']}" if part.get("error") else "")))
        d = part.get("data") or {}
        for r in d.get("rows", []):
            rows.append((name, f"{r['arch']} {r['options']} {r['size']}³ b{r['batch']}",
                         f"{r['its_per_s']:.3g} it/s", f"peak {r['peak_mb']:.0f} MB ({r['device']})"))
        for r in d.get("ratios", []):
            rows.append((name, f"{r['size']}³ {r['compares']}", f"speed {r['speed_up']:.3g}×",
                         f"peak memory {r['peak_mem_ratio']:.3g}×"))
        for k in ("stage1", "stage2"):
            if k in d:
                s = d[k]
                rows.append((name, k, f"iteration {s.get('iteration')}", f"lineage {s.get('lineage')}; "
                             f"{s.get('seconds', 0):.0f} s" + (f"; killed pid {s['killed_pid']} after checkpoint "
                                                              f"{s['killed_after_checkpoint']}" if s.get("killed_pid")
                                                              else "") +
                             (f"; {_f(s['its_per_s_steady'])} it/s steady, peak {_f(s['peak_mem_mb'])} MB"
                              if s.get("its_per_s_steady") else "")))
        for k, v in (d.get("checks") or {}).items():
            rows.append((name, f"check: {k}", "pass" if v else "FAIL", ""))
        for j in d.get("jobs", []):
            rows.append((name, f"synthesize tiled={j['tiled']} ({j['device']}, {j['actors']} actor)",
                         f"{_f(j['vol_per_min'])} volumes/min", f"steady {_f(j['steady_vol_per_min'])}/min, "
                         f"{j['written']} written, actor peak RSS {_f(j['actor_peak_rss_mb'])} MB"))
        for r in d.get("render", []):
            rows.append((name, f"render {r['size']}³ {r['mode']}", f"peak {r['peak_mb']:.0f} MB",
                         f"{r['seconds']:.3g} s" + (f"; {r['mem_vs_one_pass']:.3g}× one-pass memory"
                                                    if r.get("mem_vs_one_pass") is not None else "")))
        for k in ("failed", "skipped", "notes"):
            for msg in d.get(k, []) if isinstance(d.get(k), list) else []:
                rows.append((name, k[:-1] if k != "notes" else "note", "", msg.replace("|", "/").replace("\n", " ")))
    return rows


def write_results(out: Path, results: dict) -> None:
    _write_part(str(out / "results.json"), results)
    m = results["machine"]
    head = (f"GPU check {results['started']} on {m.get('gpu') or m['device']} (python {m['python']}, torch "
            f"{m.get('torch')}, ray {m.get('ray')}, mlflow {m.get('mlflow') or 'absent'}), budget {results['budget_s']} s"
            f"{', --tiny' if results['tiny'] else ''}\n\n")
    lines = ["| part | item | result | detail |", "|---|---|---|---|"]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in r) + " |" for r in table_rows(results)]
    tmp = out / "results.md.tmp"
    tmp.write_text(head + "\n".join(lines) + "\n")
    os.replace(tmp, out / "results.md")


def run_part(name: str, args, out: Path, timeout: float) -> dict:
    """The part in a child process (its own timeout; killed with its process group when over)."""
    part_json = out / f"{name}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--part", name, "--out", str(out), "--device", args.device,
           "--deadline", str(time.time() + max(0.9 * timeout, timeout - 10))] + (["--tiny"] if args.tiny else [])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    t0 = time.time()
    with open(out / f"{name}.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(REPO),
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
            status = "ok" if rc == 0 else "failed"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the part and everything it started (Ray included)
            proc.wait()
            rc, status = None, "timeout"
    res = {"status": status, "rc": rc, "seconds": round(time.time() - t0, 1), "timeout_s": round(timeout, 1)}
    if part_json.exists():
        res["data"] = json.loads(part_json.read_text())
    if status != "ok" and (res.get("data") or {}).get("error"):
        res["error"] = res["data"]["error"]
    elif status != "ok":
        tail = (out / f"{name}.log").read_text(errors="replace").strip().splitlines()[-3:]
        res["error"] = " / ".join(t.strip()[:300] for t in tail)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="gpu_check", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="output folder (results.md, results.json, one log per part)")
    ap.add_argument("--device", default=None, choices=["cuda", "cpu"], help="default: cuda when available")
    ap.add_argument("--tiny", action="store_true", help="32³ / tiny config everywhere (a CPU check of the script)")
    ap.add_argument("--budget-s", type=float, default=480, help="wall-clock budget of all parts (default 480)")
    ap.add_argument("--part", choices=list(CHILDREN), help=argparse.SUPPRESS)
    ap.add_argument("--deadline", type=float, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    args.out = str(out)
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.part:  # a child: do the part, write out/<part>.json as it goes
        sys.path.insert(0, str(REPO))
        part_json = out / f"{args.part}.json"
        try:
            CHILDREN[args.part](args, str(part_json), args.deadline)
        except BaseException as e:  # the reason goes into the part's figures, then the child fails as it would
            doc = json.loads(part_json.read_text()) if part_json.exists() else {}
            doc["error"] = f"{type(e).__name__}: {e}"[-800:]
            _write_part(str(part_json), doc)
            raise
        return 0
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("gpu_check: --device cuda but PyTorch sees no CUDA device", file=sys.stderr)
            return 2
    t_start = time.time()
    results = {"started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "budget_s": args.budget_s,
               "tiny": args.tiny, "machine": machine(args.device), "parts": {}}
    write_results(out, results)
    for i, name in enumerate(PARTS):
        left = args.budget_s - (time.time() - t_start)
        if name == "budget":
            results["parts"][name] = {"status": "note", "seconds": 0, "timeout_s": max(0, left), "data": {"notes": [
                f"{max(0, left):.0f} s of {args.budget_s:.0f} s left; the controlled-benchmark training at 128³ is "
                "not in this project yet, so nothing runs here"]}}
        elif left < 30:
            results["parts"][name] = {"status": "skipped", "seconds": 0, "timeout_s": 0, "error": "budget spent"}
        else:
            later = sum(SHARES[p] for p in PARTS[i:] if p in SHARES)
            results["parts"][name] = run_part(name, args, out, left * SHARES[name] / later)
        write_results(out, results)
        print(f"gpu_check: {name}: {results['parts'][name]['status']}", flush=True)
    print((out / "results.md").read_text(), flush=True)
    return 0 if all(p["status"] in ("ok", "note") for p in results["parts"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
