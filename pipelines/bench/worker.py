"""Run a benchmark case in a fresh Python process so peak memory is measured from a clean baseline.

CPU: peak RSS of the process (``ru_maxrss``) minus its RSS just before the measured work.
GPU: ``torch.cuda.max_memory_allocated`` after a reset.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import psutil

from crfgan.memory import peak_rss_bytes  # noqa: F401 (re-exported: KiB on Linux, bytes on macOS)


def rss_bytes() -> int:
    return psutil.Process().memory_info().rss


def run_case(module: str, case: dict, timeout: float = 3600) -> dict:
    """Run ``python -m module --worker JSON`` and return the JSON dict it prints on its last line."""
    cmd = [sys.executable, "-m", module, "--worker", json.dumps(case)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=os.environ.copy())
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark case {case} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def worker_main(fn) -> None:
    """Entry point of a worker: ``--worker JSON`` → print ``fn(case)`` as JSON."""
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        print(json.dumps(fn(json.loads(sys.argv[2]))), flush=True)
    else:
        sys.exit(f"usage: python -m {fn.__module__} --worker JSON (run through `crfgan bench`)")
