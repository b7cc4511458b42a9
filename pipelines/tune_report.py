"""The end of a ``crfgan tune`` sweep: the result table, the MLflow parent run, closing child runs, the best model.

- Parent run (experiment ``mlflow.experiment``, run name = the sweep): params ``sweep.*``, the space file as
  artifact ``sweep/space.yaml``; a resumed sweep continues the same run (tag ``crfgan.sweep_key``).
- Child runs are the trials' training runs (``pipelines.tracking.start_run`` with ``mlflow.parentRunId``). A trial
  that ASHA stopped never ends its own run: here it gets status KILLED, one that failed FAILED; every child gets the
  tags ``crfgan.tune.status`` / ``crfgan.tune.stopped_at`` and the sweep metric's last value.
- The best trial (the best last value of the metric among trials that reached ``train.iterations``; among all
  trials if none did) has its generator registered under its child run with alias ``sweep-<name>``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import tempfile
from pathlib import Path

from pipelines.tracking import scrub_uri as scrub


def alias(sweep: str) -> str:
    return f"sweep-{sweep}"


def start_parent(cfg, spec: dict) -> tuple[str, str]:
    """Create (or reopen, on resume) the sweep's parent run; (tracking_uri, run_id)."""
    from mlflow.tracking import MlflowClient

    from pipelines import tracking

    uri = tracking.tracking_uri(cfg, spec["storage"])
    client = MlflowClient(uri)
    exp_id = tracking.experiment_id(client, cfg, uri, spec["storage"])
    key = hashlib.sha256(f"{spec['storage']}|{spec['name']}".encode()).hexdigest()[:16]
    found = client.search_runs([exp_id], f"tags.`crfgan.sweep_key` = '{key}'", max_results=1)
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        print(f"[tune] continuing MLflow parent run {run_id}", flush=True)
        return uri, run_id
    run = client.create_run(exp_id, run_name=spec["name"], tags={
        "crfgan.sweep_key": key, "crfgan.sweep": spec["name"], "crfgan.storage_path": scrub(spec["storage"]),
        "crfgan.data_uri": scrub(spec["data"]), "git_commit": tracking.git_commit()})
    t, tu = cfg.train, cfg.tune
    params = {"sweep.metric": spec["metric"], "sweep.mode": spec["mode"], "sweep.space_file": spec["space_file"],
              "sweep.num_samples": tu.num_samples, "sweep.search": tu.search, "sweep.scheduler": tu.scheduler,
              "sweep.max_t": t.iterations,
              "sweep.grace_period": tu.grace_period or t.val_every, "sweep.reduction_factor": tu.reduction_factor,
              "sweep.config": cfg.name, "sweep.config_hash": cfg.hash()}
    for k, v in params.items():
        client.log_param(run.info.run_id, k, str(v))
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "space.yaml"
        p.write_text(spec["space_text"])
        client.log_artifact(run.info.run_id, str(p), artifact_path="sweep")
    return uri, run.info.run_id


def rows(grid, spec: dict, max_t: int, keys: list[str]) -> list[dict]:
    """One row per trial: trial, params, metric, status (completed / stopped early / error), stopped at."""
    out = []
    for r in grid:
        m = dict(r.metrics or {})
        tid = m.get("trial_id") or Path(str(r.path)).name
        it = m.get("iteration")
        status = "error" if r.error else ("completed" if it is not None and it >= max_t else "stopped early")
        value = m.get(spec["metric"])
        out.append({"trial": str(tid), **{k: (r.config or {}).get(k) for k in keys},
                    spec["metric"]: None if value is None else float(value), "status": status,
                    "stopped_at": None if it is None else int(it), "checkpoint": m.get("checkpoint_path")})
    return sorted(out, key=lambda row: row["trial"])


def best_row(table: list[dict], metric: str, mode: str) -> dict | None:
    def ok(row):
        v = row[metric]
        return v is not None and math.isfinite(v)

    pool = [r for r in table if r["status"] == "completed" and ok(r)] or [r for r in table if ok(r)]
    if not pool:
        return None
    return (min if mode == "min" else max)(pool, key=lambda r: r[metric])


def format_table(table: list[dict], keys: list[str], metric: str, best: dict | None) -> str:
    cols = ["trial", *keys, metric, "status", "stopped_at"]

    def cell(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        return "-" if v is None else str(v)

    body = [[cell(r[c]) for c in cols] + (["*"] if best is r else [""]) for r in table]
    head = cols + ["best"]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    line = lambda xs: "  ".join(str(x).ljust(w) for x, w in zip(xs, widths)).rstrip()  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths]), *map(line, body)])


def _csv(table: list[dict], cols: list[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    w.writeheader()
    w.writerows(table)
    return buf.getvalue()


def _children(client, parent_run_id: str) -> dict:
    """{trial run name: run} of the sweep's child runs."""
    exp = client.get_run(parent_run_id).info.experiment_id
    runs = client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent_run_id}'", max_results=10_000)
    return {r.data.tags.get("crfgan.run_name", r.info.run_name): r for r in runs}


def _register_best(spec: dict, best: dict, child) -> tuple[str, str] | None:
    import pyarrow.fs as pafs
    from ray.train import Checkpoint

    from crfgan.config import config_from_dict
    from crfgan.shards import read_manifest
    from pipelines.tracking import register_checkpoint

    if not best.get("checkpoint") or child is None:
        print(f"[tune] warning: best trial {best['trial']} has no checkpoint or MLflow run; nothing registered",
              flush=True)
        return None
    trials = spec["trials"]
    fs = pafs.FileSystem.from_uri(trials)[0] if "://" in trials else pafs.LocalFileSystem()
    with Checkpoint(best["checkpoint"], filesystem=fs).as_directory() as d:
        cfg = config_from_dict(json.loads((Path(d) / "config.json").read_text()))
        manifest = read_manifest(spec["data"], cfg.data.s3_endpoint)
        return register_checkpoint(spec["tracking_uri"], child.info.run_id, cfg, d, manifest, spec["data"],
                                   alias=alias(spec["name"]))


def finish(spec: dict, cfg, space, grid, seconds: float) -> dict:
    """Print and log the table, close the child runs, register the best generator, end the parent run."""
    keys = list(space.dists)
    metric, max_t = spec["metric"], cfg.train.iterations
    table = rows(grid, spec, max_t, keys)
    best = best_row(table, metric, spec["mode"])
    text = format_table(table, keys, metric, best)
    n_stopped = sum(r["status"] == "stopped early" for r in table)
    n_err = sum(r["status"] == "error" for r in table)
    summary = (f"[tune] sweep {spec['name']}: {len(table)} trials ({len(table) - n_stopped - n_err} completed, "
               f"{n_stopped} stopped early, {n_err} failed) in {seconds:.1f} s")
    print(text + "\n" + summary, flush=True)
    model = None
    if spec.get("parent_run_id"):
        from mlflow.tracking import MlflowClient

        client = MlflowClient(spec["tracking_uri"])
        children = _children(client, spec["parent_run_id"])
        for r in table:
            child = children.get(trial_name(spec["name"], r["trial"]))
            if child is None:
                continue
            rid = child.info.run_id
            client.set_tag(rid, "crfgan.tune.status", r["status"])
            client.set_tag(rid, "crfgan.tune.stopped_at", str(r["stopped_at"]))
            if r[metric] is not None and r["stopped_at"] is not None:
                client.log_metric(rid, f"tune.{metric}", r[metric], step=r["stopped_at"])
            # a trial's own driver may be stopped before it ends its run, or end it FAILED while ASHA stops it (also
            # at its last iteration, after its final result: then it is completed): the table decides the status
            want = {"error": "FAILED", "stopped early": "KILLED"}.get(r["status"], "FINISHED")
            if child.info.status != want:
                client.set_terminated(rid, want)
        if best is not None:
            model = _register_best(spec, best, children.get(trial_name(spec["name"], best["trial"])))
            client.set_tag(spec["parent_run_id"], "crfgan.best_trial", best["trial"])
            client.log_metric(spec["parent_run_id"], f"best_{metric}", best[metric])
        for k, v in {"trials": len(table), "trials_stopped_early": n_stopped, "trials_failed": n_err,
                     "wall_s": seconds}.items():
            client.log_metric(spec["parent_run_id"], f"sweep.{k}", v)
        cols = ["trial", *keys, metric, "status", "stopped_at"]
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / "results.txt").write_text(text + "\n" + summary + "\n")
            (Path(d) / "results.csv").write_text(_csv(table, cols))
            client.log_artifacts(spec["parent_run_id"], d, artifact_path="sweep")
        client.set_terminated(spec["parent_run_id"], "FINISHED" if best is not None else "FAILED")
    if best is not None:
        params = {k: best[k] for k in keys}
        print(f"[tune] best trial {best['trial']}: {metric} {best[metric]:.4g} with {params}"
              + (f"; model {model[0]} v{model[1]} @ {alias(spec['name'])}" if model else ""), flush=True)
    return {"rows": table, "best": best, "model": model, "parent_run_id": spec.get("parent_run_id"),
            "seconds": seconds, "text": text}


def trial_name(sweep: str, trial_id: str) -> str:
    return f"{sweep}-{trial_id}"
