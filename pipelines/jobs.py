"""The pipeline as Ray jobs: each stage is ``ray job submit --working-dir . -- crfgan …``, unchanged.

Used by ``crfgan demo --address URL`` (``make demo-cluster``) and the end-to-end test. What reaches a job:
- the working dir (this checkout, minus ``EXCLUDES``), which Ray puts on the job's ``PYTHONPATH``;
- ``env_vars`` in its runtime env: the non-secret settings in ``JOB_ENV`` (S3 endpoint, MLflow URI, region), copied
  from the submitting shell;
- S3 credentials: NOT through the runtime env (Ray shows a job's runtime env in its job list and dashboard): they
  come from the Ray nodes' own environment (``make up`` starts its nodes with them; a cloud cluster uses an
  instance role or a Kubernetes Secret);
- the cluster's auth token stays on the client: ``RAY_AUTH_MODE=token`` plus ``RAY_AUTH_TOKEN_PATH`` (or
  ``RAY_AUTH_TOKEN``, or ``~/.ray/auth_token``) in the submitting shell.

``CHAIN`` lists the stages in order; a stage is one entry (a command template whose ``{fields}`` are filled from
``chain_fields``), so adding synthesis or evaluation is one line.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

EXCLUDES = [".venv", ".git", "outputs", "bench-results", "runs", "mlruns", "**/__pycache__", "*.egg-info",
            ".pytest_cache", ".ruff_cache"]
JOB_ENV = ("AWS_ENDPOINT_URL", "MLFLOW_TRACKING_URI", "AWS_DEFAULT_REGION", "AWS_REGION",
           "AWS_REQUEST_CHECKSUM_CALCULATION")

# (stage, command template). Fields: prefix (s3://bucket/prefix of this chain), config, run (run name), model
# (registered model name).
CHAIN = [
    ("preprocess", "crfgan preprocess --input {prefix}/scans/ --output {prefix}/shards --config {config}"),
    ("train", "crfgan train --data {prefix}/shards --config {config} --storage {prefix}/runs --run-name {run}"),
    ("synthesize", "crfgan synthesize --model models:/{model}@candidate --count 2 --out {prefix}/synthetic"),
    # the report folder is the job's own scratch space; with --model it is logged to that model's MLflow run
    ("evaluate", "crfgan evaluate --real {prefix}/shards --synthetic {prefix}/synthetic --report report-{run} "
                 "--model models:/{model}@candidate --config {config}"),
]


def runtime_env(env: dict | None = None) -> dict:
    env = os.environ if env is None else env
    return {"excludes": EXCLUDES, "env_vars": {k: env[k] for k in JOB_ENV if env.get(k)}}


def submit_command(address: str, argv: list[str], working_dir: str = ".", env: dict | None = None) -> list[str]:
    """The exact ``ray job submit`` command line for one stage."""
    ray_bin = Path(sys.executable).parent / "ray"
    return [str(ray_bin if ray_bin.exists() else "ray"), "job", "submit", "--address", address,
            "--working-dir", working_dir, "--runtime-env-json", json.dumps(runtime_env(env)), "--", *argv]


def submit(address: str, argv: list[str], working_dir: str = ".", env: dict | None = None,
           timeout: float = 3600, agent_wait_s: float = 90) -> tuple[int, str, str | None]:
    """Submit one job and follow its logs to the end: (exit code of ``ray job submit``, its output, job id).
    A head whose job agent is still registering answers "No available agent": retried for ``agent_wait_s``."""
    cmd = submit_command(address, argv, working_dir, env)
    deadline = time.monotonic() + agent_wait_s
    while True:
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, check=False)
        out = res.stdout + res.stderr
        if "No available agent to submit job" not in out or time.monotonic() > deadline:
            break
        time.sleep(5)
    m = re.search(r"Job '(raysubmit_\w+)' submitted successfully", out)
    return res.returncode, out, m.group(1) if m else None


def chain_fields(prefix: str, config: str, run: str, model: str = "crfgan-generator") -> dict:
    return {"prefix": prefix.rstrip("/"), "config": config, "run": run, "model": model}


def chain_commands(fields: dict, overrides: dict[str, list[str]] | None = None) -> list[tuple[str, list[str]]]:
    """(stage, argv) for every stage of ``CHAIN``; ``overrides[stage]`` (key=value …) are appended to its argv."""
    overrides = overrides or {}
    return [(stage, shlex.split(tpl.format(**fields)) + list(overrides.get(stage, []))) for stage, tpl in CHAIN]


def run_chain(address: str, fields: dict, overrides: dict[str, list[str]] | None = None, working_dir: str = ".",
              env: dict | None = None, echo=print) -> list[dict]:
    """Submit the stages one after the other (each waits for the previous); stops at the first failure."""
    results = []
    for stage, argv in chain_commands(fields, overrides):
        echo(f"[cluster] {stage}: ray job submit --address {address} --working-dir {working_dir} -- "
             f"{shlex.join(argv)}")
        t0 = time.monotonic()
        rc, out, job_id = submit(address, argv, working_dir, env)
        results.append({"stage": stage, "rc": rc, "job_id": job_id, "output": out,
                        "seconds": round(time.monotonic() - t0, 1)})
        echo(f"[cluster] {stage}: job {job_id} {'succeeded' if rc == 0 else f'failed (exit {rc})'} "
             f"in {results[-1]['seconds']:.0f} s")
        if rc != 0:
            echo(out[-3000:])
            break
    return results


def upload_scans(paths: list[str], dest: str) -> list[str]:
    """Copy local scans to ``dest`` (``s3://bucket/prefix/``) so every node's tasks can read them."""
    from crfgan.storage import filesystem, join, write_bytes_atomic

    endpoint = os.environ.get("AWS_ENDPOINT_URL", "")
    fs, root = filesystem(dest, endpoint)
    out = []
    for p in paths:
        target = join(root, Path(p).name)
        write_bytes_atomic(fs, target, Path(p).read_bytes())
        out.append(f"{dest.rstrip('/')}/{Path(p).name}")
    return out


def demo(args) -> int:
    """``crfgan demo --address URL``: the demo's chain as jobs against a running cluster (``make up``'s stack)."""
    from crfgan.data import shipped_scans

    prefix = args.prefix.rstrip("/")
    if "://" not in prefix:
        print(f"demo: --prefix {prefix} must be s3://… (or another URI every node can reach)", file=sys.stderr)
        return 2
    print(f"[cluster] uploading {len(shipped_scans())} shipped scans to {prefix}/scans/", flush=True)
    upload_scans(shipped_scans(), f"{prefix}/scans/")
    overrides = {stage: list(args.overrides) for stage in ("preprocess", "train")}
    results = run_chain(args.address, chain_fields(prefix, args.config, "demo"), overrides)
    ok = len(results) == len(CHAIN) and all(r["rc"] == 0 for r in results)
    print("\n".join(f"  {r['stage']:<11} {r['job_id']}  {'ok' if r['rc'] == 0 else 'FAILED'}  {r['seconds']:.0f} s"
                    for r in results))
    if ok:
        print(f"  outputs under {prefix}/ (shards/, runs/demo/); MLflow: {os.environ.get('MLFLOW_TRACKING_URI', '?')}")
    return 0 if ok else 1
