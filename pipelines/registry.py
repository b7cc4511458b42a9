"""Find a generator for synthesis: ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` in the MLflow registry, or a
checkpoint folder. Returns the generator's files as bytes (safetensors + JSON: nothing is unpickled) plus where they
came from. A name, alias or version that does not exist is a ``ModelNotFound`` whose one-line message lists what does.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from pipelines.tracking import scrub_uri

URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))$")


class ModelNotFound(ValueError):
    """The model URI names nothing that exists; the message lists what does."""


def _listing(items, limit: int = 20) -> str:
    items = list(items)
    more = f" … ({len(items) - limit} more)" if len(items) > limit else ""
    return (", ".join(str(i) for i in items[:limit]) or "none") + more


def _registry_version(client, name: str, alias: str | None, version: str | None, where: str):
    from mlflow.exceptions import MlflowException

    try:
        rm = client.get_registered_model(name)
    except MlflowException:
        names = sorted(m.name for m in client.search_registered_models(max_results=1000))
        raise ModelNotFound(f"no registered model {name!r} at {where}; registered models: {_listing(names)}") from None
    versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
    aliases = dict(getattr(rm, "aliases", {}) or {})
    if alias is not None:
        if alias not in aliases:
            have = ", ".join(f"@{a} (v{v})" for a, v in sorted(aliases.items())) or "none"
            raise ModelNotFound(f"model {name!r} has no alias {alias!r}; aliases: {have}; versions: {_listing(versions)}")
        version = str(aliases[alias])
    if int(version) not in versions:
        raise ModelNotFound(f"model {name!r} has no version {version}; versions: {_listing(versions)}")
    return client.get_model_version(name, version)


def _generator_dir(model_dir: Path) -> Path | None:
    """The pyfunc's ``generator`` artifact folder, as the MLmodel file (YAML) names it."""
    import yaml

    try:
        mlmodel = yaml.safe_load((model_dir / "MLmodel").read_text())
        rel = mlmodel["flavors"]["python_function"]["artifacts"]["generator"]["path"]
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return None
    gen = model_dir / rel
    return gen if gen.is_dir() else None


def fetch_model(uri: str, tracking_uri: str | None = None) -> dict:
    """``{"files": {name: bytes}, "name", "version", "alias", "run_id", "uri"}`` for a model URI or folder."""
    from crfgan.checkpoint import generator_files

    m = URI.match(uri)
    if not m:
        if uri.startswith("models:"):
            raise ModelNotFound(f"model URI {uri!r} must look like models:/NAME@ALIAS or models:/NAME/VERSION")
        path = Path(uri).expanduser()
        if not path.is_dir():
            raise ModelNotFound(f"{uri}: no such checkpoint folder (and not a models:/NAME@ALIAS URI)")
        try:
            files = generator_files(path)
        except FileNotFoundError as e:
            raise ModelNotFound(str(e)) from None
        return {"files": files, "name": path.resolve().name, "version": None, "alias": None, "run_id": None,
                "uri": str(path.resolve())}

    import mlflow
    from mlflow.tracking import MlflowClient

    tracking = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not tracking:
        from pipelines.tracking import NO_STORE

        raise ModelNotFound(f"{uri}: {NO_STORE}")
    client = MlflowClient(tracking, registry_uri=tracking)
    name, alias = m["name"], m["alias"]
    mv = _registry_version(client, name, alias, m["version"], scrub_uri(tracking))
    with tempfile.TemporaryDirectory(prefix="crfgan-model-") as d:
        local = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{mv.version}", dst_path=d,
                                                    tracking_uri=tracking, registry_uri=tracking)
        gen = _generator_dir(Path(local))
        if gen is None:
            raise ModelNotFound(f"{uri} (version {mv.version}) holds no crfgan generator (no generator artifact in its MLmodel)")
        files = generator_files(gen)
    return {"files": files, "name": name, "version": str(mv.version), "alias": alias, "run_id": mv.run_id, "uri": uri}
