"""MLflow for ``crfgan train``: the run (params, input dataset), worker-side metrics and montages, model registry.

Layout of one training run in MLflow:
  experiment ``mlflow.experiment``; one run per (storage_path, run name) — a resumed Ray Train run continues the
  same MLflow run (found by the tag ``crfgan.train_key``).
  params     the whole config tree, flat (``model.crf.iterations`` …)
  metrics    every loss, ``its_per_s``, ``samples_per_s``, ``peak_mem_mb_rank<i>``, ``val_l1``, ``resumed_from`` …
  inputs     the shards as a MetaDataset (source URI, digest = manifest hash)
  artifacts  ``data/manifest.json``, ``montages/step_<n>.png`` (mid axial/coronal/sagittal slices of G(z)),
             ``curves/curves.png`` (quality, diversity and losses against the iteration, written at the end),
             ``generator/`` (a pyfunc model: generator.safetensors + config.json + the model code)
  registry   ``mlflow.registered_model`` version with alias ``candidate`` and tags data_manifest_hash, git_commit.

Tracking URI: ``mlflow.tracking_uri``, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///<storage>/mlflow.db`` (embedded:
a laptop needs no server; artifacts then live in ``<storage>/mlartifacts``). Clusters should use a server.
``crfgan synthesize`` and ``crfgan evaluate --model`` look there too (``lookup_tracking_uri``): with the default
``train.storage_path`` they find what ``crfgan train`` registered without any setting.
The registered model is a models-from-code pyfunc: no pickle anywhere, weights in safetensors.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import subprocess
import tempfile
import time
import warnings
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import numpy as np

from crfgan.shards import manifest_hash

ALIAS = "candidate"
# MLflow draws a progress bar for every artifact download, including the model files it fetches back while
# registering a generator (a hundred redraws per training run); the user's own setting wins
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
SECRET_KEYS = re.compile(r"(secret|token|password|access_key|credential|signature)", re.I)
MODEL_CODE = '''"""CRF-GAN generator as an MLflow pyfunc (models from code): seeds in, volumes (B, S, S, S) out."""
import mlflow
from pipelines.tracking import GeneratorModel

mlflow.models.set_model(GeneratorModel())
'''


# ------------------------------------------------------------------------------------------------ helpers
def scrub_uri(uri: str) -> str:
    """A URI fit for logs and MLflow: no user:password@ and no secret-looking query parameters."""
    uri = str(uri)
    if "://" not in uri:
        return uri
    p = urlsplit(uri)
    if "@" not in p.netloc and not p.query:
        return uri  # nothing to hide; urlunsplit would also drop a slash of sqlite:////abs/path
    netloc = p.netloc.rsplit("@", 1)[-1]
    query = urlencode([(k, "***" if SECRET_KEYS.search(k) else v) for k, v in parse_qsl(p.query)])
    return urlunsplit((p.scheme, netloc, p.path, query, p.fragment))


def is_local(path: str) -> bool:
    return "://" not in str(path) or str(path).startswith("file://")


def default_store(storage: str) -> Path:
    """The embedded store of a local storage folder: ``<storage>/mlflow.db`` (absolute)."""
    return Path(storage if is_local(storage) else ".").expanduser().resolve() / "mlflow.db"


NO_STORE = ("no MLflow store found: set MLFLOW_TRACKING_URI or mlflow.tracking_uri, or pass train.storage_path=FOLDER "
            "where crfgan train wrote FOLDER/mlflow.db (default: runs)")


def lookup_tracking_uri(cfg) -> str | None:
    """Where a reading stage (synthesize, evaluate) finds the registry: ``mlflow.tracking_uri``, else
    ``MLFLOW_TRACKING_URI``, else the embedded store ``crfgan train`` writes by default (``<train.storage_path>/mlflow.db``)
    if it exists; None when there is none. Never creates a store."""
    uri = cfg.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    db = default_store(cfg.train.storage_path)
    return f"sqlite:///{db}" if db.is_file() else None


def tracking_uri(cfg, storage: str) -> str:
    # an explicit mlflow.tracking_uri wins: mlflow.set_tracking_uri() also sets MLFLOW_TRACKING_URI process-wide, so
    # in one process an earlier stage's store would otherwise capture a later stage's runs
    uri = cfg.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    db = default_store(storage)
    db.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{db}"


def git_commit(cwd: str | None = None) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd or os.getcwd(), capture_output=True, text=True,
                             timeout=10)
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def montage(volumes: np.ndarray):
    """(B, S, S, S) in [-1, 1], (z, y, x) → one grey PIL image: a row per volume, axial | coronal | sagittal mid-slices."""
    from PIL import Image

    rows = []
    for v in volumes:
        s = v.shape[0] // 2
        axial, coronal, sagittal = v[s], v[:, s][::-1], v[:, :, s][::-1]  # superior up for the side views
        rows.append(np.concatenate([axial, coronal, sagittal], axis=1))
    img = np.clip((np.concatenate(rows, axis=0) + 1) * 127.5, 0, 255).astype(np.uint8)
    scale = max(1, 256 // volumes.shape[1])
    return Image.fromarray(img).resize((img.shape[1] * scale, img.shape[0] * scale), Image.NEAREST)


# ------------------------------------------------------------------------------------------------ driver side
def experiment_id(client, cfg, uri: str, storage: str) -> str:
    """``mlflow.experiment``'s id, created on first use (embedded sqlite: artifacts in ``<storage>/mlartifacts``)."""
    exp = client.get_experiment_by_name(cfg.mlflow.experiment)
    if exp is not None:
        return exp.experiment_id
    loc = None
    if uri.startswith("sqlite:") and is_local(storage):
        loc = (Path(storage).expanduser().resolve() / "mlartifacts").as_uri()
    return client.create_experiment(cfg.mlflow.experiment, artifact_location=loc)


def start_run(cfg, storage: str, run_name: str, data_uri: str, manifest: dict,
              parent_run_id: str | None = None) -> tuple[str, str]:
    """Create (or, for a resumed Ray run, reopen) the MLflow run; returns (tracking_uri, run_id).
    ``parent_run_id`` nests it under that run (a sweep's trial under the sweep)."""
    import mlflow
    from mlflow.entities import Param
    from mlflow.tracking import MlflowClient

    uri = tracking_uri(cfg, storage)
    client = MlflowClient(uri)
    exp_id = experiment_id(client, cfg, uri, storage)
    key = hashlib.sha256(f"{storage}|{run_name}".encode()).hexdigest()[:16]
    found = client.search_runs([exp_id], f"tags.`crfgan.train_key` = '{key}'", max_results=1,
                               order_by=["attributes.start_time DESC"])
    params = {k: str(v)[:6000] for k, v in cfg.flat().items()}
    if found:
        run = found[0]
        client.update_run(run.info.run_id, status="RUNNING")
        old = run.data.params
        new = [Param(k, v) for k, v in params.items() if k not in old]
        changed = {f"resume.{k}": v for k, v in params.items() if k in old and old[k] != v}
        print(f"[train] continuing MLflow run {run.info.run_id}", flush=True)
    else:
        parent = {"mlflow.parentRunId": parent_run_id} if parent_run_id else {}
        run = client.create_run(exp_id, run_name=run_name, tags={"crfgan.train_key": key, **parent})
        new, changed = [Param(k, v) for k, v in params.items()], {}
    run_id = run.info.run_id
    for i in range(0, len(new), 100):
        client.log_batch(run_id, params=new[i : i + 100])
    mhash = manifest_hash(manifest)
    tags = {"crfgan.storage_path": scrub_uri(storage), "crfgan.run_name": run_name, "crfgan.data_uri": scrub_uri(data_uri),
            "crfgan.config_hash": cfg.hash(), "data_manifest_hash": mhash, "git_commit": git_commit(), **changed}
    for k, v in tags.items():
        client.set_tag(run_id, k, v)
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "manifest.json"
        p.write_text(json.dumps(manifest, indent=2, sort_keys=True))
        client.log_artifact(run_id, str(p), artifact_path="data")
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(run_id=run_id):
        mlflow.log_input(_meta_dataset(data_uri, mhash, manifest), context="training")
    client.update_run(run_id, status="RUNNING")
    return uri, run_id


def _meta_dataset(data_uri: str, digest: str, manifest: dict):
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.http_dataset_source import HTTPDatasetSource
    from mlflow.data.meta_dataset import MetaDataset

    clean = scrub_uri(data_uri)
    try:
        with warnings.catch_warnings():  # "can be interpreted in multiple ways: LocalArtifactDatasetSource, …" (same)
            warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
            source = resolve_dataset_source(clean if "://" in clean else str(Path(clean).resolve()))
    except Exception:  # an unusual scheme: still record where the shards were
        source = HTTPDatasetSource(clean)
    counts = manifest.get("counts", {}).get("split", {})
    name = f"crfgan-shards-{manifest.get('image_size', '?')}-" + "-".join(f"{k}{v}" for k, v in sorted(counts.items()))
    return MetaDataset(source=source, name=name, digest=digest)


def end_run(uri: str, run_id: str, ok: bool) -> None:
    from mlflow.tracking import MlflowClient

    MlflowClient(uri).set_terminated(run_id, "FINISHED" if ok else "FAILED")


def register_generator(uri: str, run_id: str, cfg, generator_dir: str, tags: dict,
                       alias: str = ALIAS) -> tuple[str, str]:
    """Log the generator as a models-from-code pyfunc, register a version, alias it (``candidate``); (name, version).

    Idempotent: a version of this run with the same tags (iterations, config and data hashes) is re-aliased, not
    registered again — a sweep resumed after a kill during its registration ends with one version, not two. The
    version is created with its tags in one call, so a version without them is never left behind."""
    import mlflow
    from mlflow.tracking import MlflowClient

    name = cfg.mlflow.registered_model
    want = {k: str(v) for k, v in tags.items()}
    client = MlflowClient(uri)
    for mv in client.search_model_versions(f"name='{name}' and run_id='{run_id}'"):
        if all(mv.tags.get(k) == v for k, v in want.items()):
            client.set_registered_model_alias(name, alias, mv.version)
            return name, str(mv.version)
    mlflow.set_tracking_uri(uri)
    meta_path = Path(generator_dir) / "metadata.json"  # the synthesis metadata, also readable from the MLmodel file
    synthesis = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    with tempfile.TemporaryDirectory() as d:
        code = Path(d) / "crfgan_generator_model.py"
        code.write_text(MODEL_CODE)
        pkg = Path(__file__).resolve().parent.parent
        pyfunc_log = logging.getLogger("mlflow.pyfunc")
        level = pyfunc_log.level
        pyfunc_log.setLevel(logging.ERROR)  # "Failed to infer model signature" from GeneratorModel's ndarray hint
        try:
            with mlflow.start_run(run_id=run_id):
                info = mlflow.pyfunc.log_model(
                    name="generator", python_model=str(code), artifacts={"generator": str(generator_dir)},
                    code_paths=[str(pkg / "crfgan"), str(pkg / "pipelines")],
                    metadata={"image_size": cfg.model.image_size, "arch": cfg.model.arch,
                              "class_names": list(cfg.model.class_names), "synthesis": synthesis})
        finally:
            pyfunc_log.setLevel(level)
    version = str(mlflow.register_model(info.model_uri, name, tags=want).version)
    client.set_registered_model_alias(name, alias, version)
    return name, version


def register_checkpoint(uri: str, run_id: str, cfg, checkpoint_dir: str, manifest: dict, data_uri: str,
                        alias: str | None = None) -> tuple[str, str]:
    """Register the generator of a training checkpoint (a local folder) under ``run_id``, with the metadata a correct
    synthetic file needs (``crfgan.synth.metadata_from_shards``); (name, version)."""
    import json

    from crfgan.checkpoint import load_generator, save_generator
    from crfgan.shards import manifest_hash
    from crfgan.synth import metadata_from_shards

    state = json.loads((Path(checkpoint_dir) / "state.json").read_text())
    digest = manifest_hash(manifest)
    meta = metadata_from_shards(cfg, data_uri, manifest, digest, cfg.data.s3_endpoint)
    with tempfile.TemporaryDirectory() as tmp:
        g = load_generator(checkpoint_dir)
        gdir = save_generator(Path(tmp) / "generator", cfg, g, {"iterations": state["iteration"], "mlflow_run_id": run_id},
                              meta)
        tags = {"data_manifest_hash": digest, "git_commit": git_commit(),
                "iterations": state["iteration"], "config_hash": cfg.hash()}
        return register_generator(uri, run_id, cfg, str(gdir), tags, alias=alias or ALIAS)


# ------------------------------------------------------------------------------------------------ pyfunc model
try:
    import mlflow.pyfunc as _pyfunc

    _Base = _pyfunc.PythonModel
except ImportError:  # mlflow is optional for the rest of this module
    _Base = object


class GeneratorModel(_Base):
    """predict(seeds) → volumes (B, S, S, S) float32 in [-1, 1]; seeds: ints, a 1-D array or a frame with ``seed``
    (and, for a class-conditional model, ``class``: a name from ``model.class_names`` per row).

    Rendering is ``crfgan.synth``'s, as in ``crfgan synthesize``; ``crfgan.synth.to_stored`` with the model's
    ``metadata.json`` (``self.g.metadata``) maps the values to what a written file holds (HU for CT).
    """

    def load_context(self, context):
        from crfgan.checkpoint import load_generator

        self.g = load_generator(context.artifacts["generator"])
        self.cfg = self.g.config

    # the hint (np.ndarray: a type MLflow infers no schema from) keeps MLflow from warning at every import that
    # predict has none; a DataFrame with a ``seed`` column works as well. register_generator quiets MLflow's
    # "Failed to infer model signature" that this hint causes at logging time.
    def predict(self, context, model_input: np.ndarray, params=None):
        names = None
        if hasattr(model_input, "columns"):
            seeds = model_input["seed"] if "seed" in model_input.columns else model_input.iloc[:, 0]
            names = list(model_input["class"]) if "class" in model_input.columns else None
        else:
            seeds = model_input
        seeds = [int(s) for s in np.asarray(seeds).reshape(-1)]
        cls = self.g.class_index([str(n) for n in names]) if names is not None else None
        from crfgan.synth import render_volumes

        return render_volumes(self.g, self.cfg, seeds, class_index=cls)


# ------------------------------------------------------------------------------------------------ worker side
class WorkerTracker:
    """Rank 0's logger: batched metrics and montage PNGs into the driver's MLflow run."""

    def __init__(self, uri: str, run_id: str, cfg):
        from mlflow.tracking import MlflowClient

        self.client, self.run_id, self.cfg = MlflowClient(uri), run_id, cfg
        self.pending: list = []
        self.history: dict[int, dict] = {}  # step → the curve keys logged at it (for curves.png)

    def log_metrics(self, metrics: dict, step: int) -> None:
        from mlflow.entities import Metric

        from crfgan.metrics.curves import PANELS

        ts = int(time.time() * 1000)
        self.pending += [Metric(k, float(v), ts, int(step)) for k, v in metrics.items() if isinstance(v, (int, float))]
        keys = {k for _, ks, _ in PANELS for k in ks}
        row = {k: float(v) for k, v in metrics.items() if k in keys and isinstance(v, (int, float))}
        if row:
            self.history.setdefault(int(step), {"iteration": int(step)}).update(row)
        if len(self.pending) >= 200:
            self.flush()

    def log_curves(self) -> None:
        """``curves/curves.png``: quality, diversity and losses against the iteration, from this run's log
        (a resumed run draws what it logged since it resumed)."""
        from crfgan.metrics.curves import plot_curves

        rows = [self.history[k] for k in sorted(self.history)]
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / "curves.png"
            if plot_curves(rows, p, title=f"{self.cfg.train.run_name} ({self.cfg.name})"):
                self.client.log_artifact(self.run_id, str(p), artifact_path="curves")

    def flush(self) -> None:
        for i in range(0, len(self.pending), 1000):
            self.client.log_batch(self.run_id, metrics=self.pending[i : i + 1000])
        self.pending = []

    def log_montage(self, g, step: int, device) -> None:
        was = g.training
        g.eval()
        try:
            k = self.cfg.model.num_classes  # conditional: seed 0 as class 0, seed 1 as class 1 (mod K)
            cls = np.arange(2) % k if k else None
            from crfgan.synth import render_volumes

            vols = render_volumes(g, self.cfg, seeds=[0, 1], device=device, class_index=cls)
        finally:
            g.train(was)
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / f"step_{step:07d}.png"
            montage(vols).save(p)
            self.client.log_artifact(self.run_id, str(p), artifact_path="montages")
