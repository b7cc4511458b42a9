"""``crfgan tune``: a Ray Tune sweep of CRF-GAN training (ASHA early stopping, MLflow parent/child runs).

    crfgan tune --data SHARDS_URI --space tune_spaces/quick.yaml --config tiny [--name SWEEP] [key=value ...]
    crfgan tune --resume SWEEP [--storage PATH_OR_S3]      # finished trials are not rerun
    ray job submit --address http://HEAD:8265 --working-dir . -- crfgan tune --data s3://… --space … --config ct128

Each trial is a Ray Train run of the existing trainer (``pipelines.train.run``: its checkpoints, resume
and MLflow logging), started by a function trainable with Ray Train v2's ``TuneReportCallback``, which forwards
the trainer's reports to Tune. Only reports that carry the sweep's metric reach Tune (the trainer reports losses
more often than it validates), each with the latest checkpoint path. ASHA stops trials on that metric with the
trainer's ``iteration`` as its time attribute (``max_t = train.iterations``).

Resources: a trial holds ``tune.driver_cpus`` for its driver; its TorchTrainer then asks for ``train.num_workers``
workers of ``train.cpus_per_worker`` CPUs (and a GPU each with ``train.use_gpu``). Tune does not reserve the
workers, so concurrency is capped (``tune.max_concurrent_trials``, 0 = what the cluster's CPUs/GPUs hold); a 2-CPU
laptop runs one trial (1 driver + 1 worker CPU) at a time instead of deadlocking.

Layout under ``<storage>/<SWEEP>/``: ``sweep.json`` (what ``--resume`` needs), ``tune/`` (Tune's experiment),
``trials/<SWEEP>-<trial id>/`` (each trial's Ray Train run). MLflow: one parent run per sweep, one child run per
trial (params = the trial's whole config), the best trial's generator registered with alias ``sweep-<SWEEP>``,
and the result table as the parent's artifacts ``sweep/results.txt`` and ``sweep/results.csv``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


from pipelines.args import add_config_arguments
from pipelines.runtime import ensure_ray
from pipelines.runtime import storage_uri

SPEC_FILE = "sweep.json"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", metavar="URI", help="output of crfgan preprocess (folder or s3://bucket/prefix)")
    p.add_argument("--space", metavar="YAML", help="search space file (tune_spaces/quick.yaml, tune_spaces/default.yaml)")
    p.add_argument("--name", default=None, help="sweep name (default: the space file's name and a timestamp)")
    p.add_argument("--resume", metavar="SWEEP", help="continue the sweep SWEEP (under --storage); finished trials "
                   "are kept, unfinished ones continue from their last checkpoint")
    p.add_argument("--storage", default=None, metavar="PATH_OR_S3", help="sweep storage (default: train.storage_path)")
    p.add_argument("--no-mlflow", action="store_true", help="skip MLflow tracking and model registration")
    add_config_arguments(p)


# ------------------------------------------------------------------------------------------------ paths
def sub(uri: str, *parts: str) -> str:
    """``uri``/parts, keeping a query string (``?endpoint_override=…``) at the end."""
    base, q = (uri.split("?", 1) + [""])[:2]
    return "/".join([base.rstrip("/"), *parts]) + (f"?{q}" if q else "")


def _fs(uri: str):
    if "?" in uri:
        import pyarrow.fs as pafs

        return pafs.FileSystem.from_uri(uri)
    from crfgan.storage import filesystem

    return filesystem(uri)


def write_spec(spec: dict) -> None:
    from crfgan.storage import write_bytes_atomic

    fs, path = _fs(sub(spec["root"], SPEC_FILE))
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    keep = {k: v for k, v in spec.items() if k not in ("tracking_uri", "parent_run_id")}  # found again on resume
    write_bytes_atomic(fs, path, json.dumps(keep, indent=1, sort_keys=True).encode())


def read_spec(storage: str, name: str) -> dict:
    fs, path = _fs(sub(storage_uri(storage), name, SPEC_FILE))
    try:
        with fs.open_input_stream(path) as f:
            return json.loads(f.read())
    except FileNotFoundError:
        raise FileNotFoundError(f"no sweep {name!r} under {storage} ({SPEC_FILE} missing)") from None


# ------------------------------------------------------------------------------------------------ trial side
def _report_callback(metric: str):
    from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY, TuneReportCallback

    class MetricReportCallback(TuneReportCallback):
        """Forward only reports that carry ``metric`` (Tune checks it in every result), with the latest
        checkpoint path seen so far."""

        def __init__(self):
            super().__init__()
            self.metric, self.last_checkpoint = metric, None

        def after_report(self, run_context, metrics, checkpoint):
            if checkpoint is not None:
                self.last_checkpoint = checkpoint.path
            if metrics and self.metric in metrics[0]:
                m = dict(metrics[0])
                if self.last_checkpoint:
                    m[CHECKPOINT_PATH_KEY] = self.last_checkpoint
                elif m.get("resumed_checkpoint_path"):  # a finished trial relaunched by a resume: its final checkpoint
                    m[CHECKPOINT_PATH_KEY] = m["resumed_checkpoint_path"]
                self._training_actor_item_queue.put(m)

    return MetricReportCallback()


def run_trial(params: dict, spec: dict) -> None:
    """The function trainable: the trial's config → one Ray Train run with the Tune report callback."""
    from ray import tune

    from crfgan.config import config_from_dict
    from pipelines.train import run as run_training
    from pipelines.tune_report import trial_name
    from pipelines.tune_space import apply

    cfg = apply(config_from_dict(spec["base"]), params)
    cfg.train.storage_path = spec["trials"]
    cfg.train.run_name = trial_name(spec["name"], tune.get_context().get_trial_id())
    if spec.get("tracking_uri"):  # the sweep's server or sqlite file; via the environment, so never a logged param
        os.environ["MLFLOW_TRACKING_URI"] = spec["tracking_uri"]
    run_training(cfg, spec["data"], mlflow_enabled=bool(spec.get("parent_run_id")), data_cpus=0.0, register=False,
                 callbacks=[_report_callback(spec["metric"])], parent_run_id=spec.get("parent_run_id"))


def release_orphaned_placement_groups() -> list[str]:
    """Remove this job's placement groups whose creating actor is dead; returns their ids.

    When ASHA stops a trial, Tune ends the trial's actor, and with it the Train controller that owns the workers'
    placement group. A non-detached placement group lives until both its creator actor *and* its job are gone, and
    the job here is this sweep, so the workers' CPUs stay reserved and the next trial waits for them forever. Ray
    Train's own cleaner actor asks the State API (the dashboard) whether the controller still lives; without a
    dashboard, or where more than one Ray instance runs on a machine, it cannot. The GCS table itself says
    whether a group's creator actor is dead, so the sweep's driver checks it.
    """
    import ray
    from ray._private.state import state
    from ray.core.generated import gcs_pb2
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    job = ray.get_runtime_context().get_job_id()
    removed = []
    for blob in state._connect_and_get_accessor().get_placement_group_table():
        d = gcs_pb2.PlacementGroupTableData.FromString(blob)
        by_actor = d.creator_actor_id and d.creator_actor_id != b"\xff" * len(d.creator_actor_id)
        if (by_actor and d.creator_actor_dead and not d.is_detached and d.creator_job_id.hex() == job
                and d.state != gcs_pb2.PlacementGroupTableData.REMOVED):
            remove_placement_group(PlacementGroup(ray.PlacementGroupID(d.placement_group_id)))
            removed.append(d.placement_group_id.hex())
    return removed


def _cleanup_callback():
    from ray.tune import Callback

    class ReleaseOrphans(Callback):
        """Release stopped trials' worker placement groups (see ``release_orphaned_placement_groups``)."""

        def __init__(self, every_s: float = 2.0):
            self.every_s, self.last = every_s, 0.0

        def on_step_begin(self, iteration, trials, **info):
            if time.monotonic() - self.last >= self.every_s:
                self.last = time.monotonic()
                for pg in release_orphaned_placement_groups():
                    print(f"[tune] released the placement group {pg} of a stopped trial's workers", flush=True)

    return ReleaseOrphans()


# ------------------------------------------------------------------------------------------------ driver side
def concurrency(cfg, resources: dict) -> int:
    """Trials the cluster holds at once: each needs its driver's CPUs plus its workers' CPUs (and GPUs)."""
    if cfg.tune.max_concurrent_trials:
        return cfg.tune.max_concurrent_trials
    t = cfg.train
    need_cpu = cfg.tune.driver_cpus + t.num_workers * t.cpus_per_worker
    n = int(resources.get("CPU", 0) // need_cpu) if need_cpu else 10**6
    if t.use_gpu:
        n = min(n, int(resources.get("GPU", 0) // t.num_workers))
    if n < 1:
        print(f"[tune] warning: the cluster holds {resources.get('CPU', 0):g} CPUs / {resources.get('GPU', 0):g} GPUs, "
              f"less than one trial ({need_cpu:g} CPUs{', GPUs' if t.use_gpu else ''}); running one at a time "
              "(an autoscaler may add nodes)", flush=True)
    return max(1, n)


def _trainable(spec: dict):
    from ray import tune

    return tune.with_resources(tune.with_parameters(run_trial, spec=spec), {"CPU": spec["driver_cpus"]})


def _tuner(spec: dict, space, cfg, resources: dict):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from pipelines.tune_space import param_space

    t, tu = cfg.train, cfg.tune
    # stop_last_trials=False: a trial that reaches max_t ends by itself (its run closes cleanly) instead of being
    # stopped at its last report
    asha = ASHAScheduler(time_attr="iteration", max_t=t.iterations, grace_period=tu.grace_period or t.val_every,
                         reduction_factor=tu.reduction_factor, stop_last_trials=False) if tu.scheduler == "asha" else None
    return tune.Tuner(
        _trainable(spec),
        param_space=param_space(space, tu.search),
        tune_config=tune.TuneConfig(metric=space.metric, mode=space.mode, num_samples=tu.num_samples, scheduler=asha,
                                    max_concurrent_trials=concurrency(cfg, resources)),
        run_config=tune.RunConfig(name="tune", storage_path=spec["root"], failure_config=tune.FailureConfig(0),
                                  callbacks=[_cleanup_callback()]),
    )


def new_sweep(args) -> dict:
    import pyarrow.fs as pafs

    from crfgan.config import load_config, parse_override
    from crfgan.shards import read_manifest
    from pipelines.tune_space import load_space

    if not (args.data and args.space):
        raise FileNotFoundError("--data and --space are required (or --resume SWEEP)")
    overrides = dict(parse_override(item)[:2] for item in args.overrides)
    space, cfg = load_space(args.space, load_config(args.config), overrides)  # every check, before Ray starts
    read_manifest(args.data, cfg.data.s3_endpoint)  # the shards exist
    storage = storage_uri(args.storage or cfg.train.storage_path)
    name = args.name or f"{space.path.rsplit('/', 1)[-1].rsplit('.', 1)[0]}-{time.strftime('%Y%m%d-%H%M%S')}"
    root = sub(storage, name)
    fs, path = _fs(sub(root, SPEC_FILE))
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        raise FileExistsError(f"sweep {name!r} already exists under {storage}: continue it with --resume {name} "
                              "or choose another --name")
    with open(space.path, encoding="utf-8") as f:
        space_text = f.read()
    data = args.data if "://" in args.data else storage_uri(args.data)  # trials may run in another folder
    return {"name": name, "storage": storage, "root": root, "trials": sub(root, "trials"), "data": data,
            "base": cfg.to_dict(), "space_file": space.path, "space_text": space_text, "metric": space.metric,
            "mode": space.mode, "driver_cpus": cfg.tune.driver_cpus, "mlflow": not args.no_mlflow}


def _space_from_spec(spec: dict):
    import os
    import tempfile

    from crfgan.config import config_from_dict
    from pipelines.tune_space import load_space

    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, os.path.basename(spec["space_file"]))
        with open(p, "w", encoding="utf-8") as f:
            f.write(spec["space_text"])
        space, _ = load_space(p, config_from_dict(spec["base"]))
    space.path = spec["space_file"]
    return space


def run(spec: dict, resume: bool = False) -> dict:
    """Run (or resume) a sweep; returns {rows, best, model, parent_run_id, seconds}."""
    from crfgan.config import config_from_dict
    from pipelines import tune_report

    ray = ensure_ray()
    from ray import tune

    cfg = config_from_dict(spec["base"])
    space = _space_from_spec(spec)
    if "://" not in spec["storage"] and len([n for n in ray.nodes() if n.get("Alive")]) > 1:
        print("[tune] warning: local storage on a multi-node cluster; use s3://… so every node sees the trials",
              flush=True)
    t0 = time.perf_counter()
    if spec["mlflow"]:
        spec["tracking_uri"], spec["parent_run_id"] = tune_report.start_parent(cfg, spec)
    else:
        spec["tracking_uri"] = spec["parent_run_id"] = None
    if not resume:
        write_spec(spec)
    path = sub(spec["root"], "tune")
    print(f"[tune] sweep {spec['name']}: {len(space.dists)} keys, {cfg.tune.num_samples} sample(s), {cfg.tune.search} "
          f"search, {'ASHA' if cfg.tune.scheduler == 'asha' else 'no early stopping'}, {space.metric} ({space.mode}) → "
          f"{tune_report.scrub(spec['root'])}", flush=True)
    if resume:
        tuner = tune.Tuner.restore(path, trainable=_trainable(spec), resume_unfinished=True, resume_errored=False)
    else:
        tuner = _tuner(spec, space, cfg, ray.cluster_resources())
    grid = tuner.fit()
    seconds = time.perf_counter() - t0
    release_orphaned_placement_groups()  # a trial stopped at the very end
    return tune_report.finish(spec, cfg, space, grid, seconds)


def main(args: argparse.Namespace) -> int:
    if args.resume:
        from crfgan.config import load_config

        storage = args.storage or load_config(args.config).train.storage_path
        try:
            spec = read_spec(storage, args.resume)
        except FileNotFoundError as e:
            print(f"tune: {e}", file=sys.stderr)
            return 2
        out = run(spec, resume=True)
    else:
        try:
            spec = new_sweep(args)
        except (FileNotFoundError, FileExistsError) as e:
            print(f"tune: {e}", file=sys.stderr)
            return 2
        out = run(spec)
    return 0 if out["best"] is not None else 1

