"""Run a benchmark case in a fresh Python process so peak memory is measured from a clean baseline.

CPU: peak RSS of the process (``ru_maxrss``) minus its RSS just before the measured work.
GPU: ``torch.cuda.max_memory_allocated`` after a reset.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

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


class Sampler:
    """A context manager that calls ``sample()`` every ``interval`` seconds in a daemon thread while it is open
    (peak figures of a run: memory of processes, object-store use); ``sample()`` returning False stops it."""

    def __init__(self, interval: float = 0.25):
        self.interval = interval
        self._stop = threading.Event()

    def sample(self) -> bool | None:
        raise NotImplementedError

    def _run(self):
        while not self._stop.is_set():
            if self.sample() is False:
                return
            self._stop.wait(self.interval)

    def __enter__(self):
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join(timeout=5)
