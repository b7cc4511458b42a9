"""Every YAML under infra/ parses and validates: KubeRay kinds against the KubeRay v1.7 CRDs in ../shared/kuberay-crds
(their OpenAPI v3 schema, as the API server checks structure), core Kubernetes kinds with ``kubernetes-validate``
(its shipped schemas, offline); every job entrypoint is parsed by the real ``crfgan`` CLI parser and names a config
and space file that exist. Files are discovered, so a YAML added to infra/ later is covered without editing this test.
"""

from __future__ import annotations

import functools
import re
import shlex
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
CRDS = REPO.parent / "shared" / "kuberay-crds"
YAMLS = sorted(p for p in INFRA.rglob("*") if p.suffix in (".yaml", ".yml"))
KUBE_VERSION = "1.33"  # schemas shipped by kubernetes-validate; a cluster of this API level accepts the manifests


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _k8s_docs() -> list[tuple[Path, int, dict]]:
    return [(p, i, d) for p in YAMLS for i, d in enumerate(_docs(p)) if isinstance(d, dict) and "apiVersion" in d]


def _id(item) -> str:
    p, i, d = item
    return f"{p.relative_to(INFRA)}#{i}:{d.get('kind')}"


@functools.lru_cache(maxsize=1)
def _crd_schemas() -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) → openAPIV3Schema for every CRD file in ../shared/kuberay-crds (read once: 3 MB of YAML)."""
    assert CRDS.is_dir(), f"{CRDS} is missing: the KubeRay CRDs are needed to validate infra/ (not a skip)"
    out = {}
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: ~10x faster on the CRDs
    for f in sorted(CRDS.glob("*.yaml")):
        crd = yaml.load(f.read_text(), Loader=loader)  # noqa: S506 — a safe loader
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for v in crd["spec"]["versions"]:
            out[(f"{group}/{v['name']}", kind)] = v["schema"]["openAPIV3Schema"]
    return out


def test_infra_has_the_manifests_the_docs_promise():
    names = {str(p.relative_to(INFRA)) for p in YAMLS}
    for f in ("k8s/raycluster.yaml", "k8s/rayjob-preprocess.yaml", "k8s/rayjob-train.yaml", "k8s/rayjob-tune.yaml",
              "k8s/rayjob-synthesize.yaml", "k8s/settings.yaml", "k8s/mlflow.yaml", "cluster/aws-gpu.yaml"):
        assert f in names, f"infra/{f} missing; have {sorted(names)}"


@pytest.mark.parametrize("path", YAMLS, ids=[str(p.relative_to(INFRA)) for p in YAMLS])
def test_every_yaml_parses(path):
    docs = _docs(path)
    assert docs, f"{path}: no YAML document"
    for d in docs:
        assert isinstance(d, dict), f"{path}: a document is {type(d).__name__}, not a mapping"


@pytest.mark.parametrize("item", _k8s_docs(), ids=_id)
def test_kubernetes_object_validates(item):
    """KubeRay kinds against the CRD schema (jsonschema); every other kind with kubernetes-validate (strict)."""
    path, _, doc = item
    api, kind = doc["apiVersion"], doc["kind"]
    assert doc.get("metadata", {}).get("name"), f"{path}: {kind} without metadata.name"
    if api.startswith("ray.io/"):
        import jsonschema

        schemas = _crd_schemas()
        assert (api, kind) in schemas, f"{path}: {api} {kind} is not a kind of the KubeRay CRDs ({sorted(schemas)})"
        errors = sorted(jsonschema.Draft7Validator(schemas[(api, kind)]).iter_errors(doc), key=str)
        assert not errors, f"{path}: {kind} does not match the CRD: " + "; ".join(
            f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors[:5])
        _no_unknown_fields(doc, schemas[(api, kind)], path)
    else:
        import kubernetes_validate

        try:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{path}: {kind} invalid: {e.message} at {'/'.join(map(str, e.path))}")


def _no_unknown_fields(node, schema: dict, path: Path, where: str = "") -> None:
    """The API server prunes fields a structural schema does not declare: a typo would silently vanish. Fail on it."""
    if isinstance(node, dict) and "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
        for k, v in node.items():
            if where == "" and k in ("apiVersion", "kind", "metadata", "status"):
                continue
            assert k in schema["properties"], f"{path}: unknown field {where}/{k} (the API server would drop it)"
            _no_unknown_fields(v, schema["properties"][k], path, f"{where}/{k}")
    elif isinstance(node, dict) and isinstance(schema.get("additionalProperties"), dict):
        for k, v in node.items():
            _no_unknown_fields(v, schema["additionalProperties"], path, f"{where}/{k}")
    elif isinstance(node, list) and isinstance(schema.get("items"), dict):
        for i, v in enumerate(node):
            _no_unknown_fields(v, schema["items"], path, f"{where}[{i}]")


def test_the_crd_check_catches_a_wrong_manifest():
    """The validation above can fail: a RayCluster with a string replica count and an unknown field is rejected."""
    import jsonschema

    schema = _crd_schemas()[("ray.io/v1", "RayCluster")]
    bad = {"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {"name": "x"},
           "spec": {"headGroupSpec": {"template": {"spec": {"containers": []}}},
                    "workerGroupSpecs": [{"groupName": "g", "minReplicas": "0", "maxReplicas": 1,
                                          "template": {"spec": {"containers": []}}}]}}
    assert list(jsonschema.Draft7Validator(schema).iter_errors(bad))
    typo = {"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": {"name": "x"}, "spec": {"entrypont": "crfgan"}}
    with pytest.raises(AssertionError, match="unknown field /spec/entrypont"):
        _no_unknown_fields(typo, _crd_schemas()[("ray.io/v1", "RayJob")], Path("typo.yaml"))


# ------------------------------------------------------------------------------------------------ entrypoints
def _entrypoints() -> list[tuple[str, str]]:
    """(where, command line) of every crfgan command in infra/: RayJob/RayCronJob entrypoints, container commands and
    args (CronJob, Job, Deployment …) that run crfgan."""
    found = []

    def walk(node, where):
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "entrypoint" and isinstance(v, str):
                    found.append((where, v))
                elif k in ("command", "args") and isinstance(v, list) and v and str(v[0]).endswith("crfgan"):
                    found.append((where, shlex.join(["crfgan", *map(str, v[1:])])))  # exec form: crfgan, args…
                elif k in ("command", "args") and isinstance(v, list) and any("crfgan " in str(x) for x in v):
                    found.extend((where, str(x)) for x in v if "crfgan " in str(x))  # sh -c "crfgan …"
                else:
                    walk(v, where)
        elif isinstance(node, list):
            for v in node:
                walk(v, where)

    for path, i, doc in _k8s_docs():
        walk(doc, f"{path.relative_to(INFRA)}#{i}")
        if doc.get("kind") == "ConfigMap":  # a manifest template kept in a ConfigMap (the CronJob's RayJob)
            for key, text in (doc.get("data") or {}).items():
                if "entrypoint" in str(text):
                    walk(yaml.safe_load(text), f"{path.relative_to(INFRA)}#{i}/{key}")
    return found


def _configmap_values() -> dict[str, str]:
    """Every ConfigMap key in infra/ → its value: what ``${VAR}`` in an entrypoint expands to on the cluster."""
    return {k: str(v) for _, _, d in _k8s_docs() if d.get("kind") == "ConfigMap"
            for k, v in (d.get("data") or {}).items()}


def _expand(line: str) -> str:
    """The shell expansions an entrypoint does on the Ray head: ``$(date …)`` → a date, ``${VAR}`` → the ConfigMap's
    value (a placeholder path when no ConfigMap here sets it, as for ``CRFGAN_S3_PREFIX``)."""
    values = _configmap_values()
    line = re.sub(r"\$\(date -u \+%Y%m%d\)", "20261127", line)
    line = re.sub(r"\$\(date[^)]*\)", "2026-11-27", line)
    return re.sub(r"\$\{(\w+)\}", lambda m: values.get(m.group(1), f"s3://bucket/{m.group(1).lower()}"), line)


ENTRYPOINTS = _entrypoints()


def test_every_rayjob_has_an_entrypoint():
    jobs = [_id(x) for x in _k8s_docs() if x[2]["kind"] == "RayJob"]
    assert len(jobs) >= 4 and len(ENTRYPOINTS) >= len(jobs), (jobs, ENTRYPOINTS)


def _entrypoint_problem(where: str, line: str) -> str | None:
    """Why ``line`` is not a runnable crfgan command (None when it is): it must parse with the real ``crfgan`` parser
    (subcommand, flags, required arguments); its --config must be a preset or a file in the repository, its --space
    a file in the repository."""
    from crfgan.config import preset_names
    from pipelines.cli import build_parser

    words = shlex.split(_expand(line))
    if "crfgan" not in words:
        return f"{where}: the entrypoint does not run crfgan: {line!r}"
    argv = words[words.index("crfgan") + 1:]
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    if not argv or argv[0] not in commands:
        return f"{where}: 'crfgan {argv[0] if argv else ''}' is not a crfgan subcommand (have {sorted(commands)})"
    try:
        args = parser.parse_args(argv)
    except SystemExit:
        return f"{where}: the crfgan parser rejects {line!r}"
    config = getattr(args, "config", None)
    if config is not None and "--config" in argv and config not in preset_names() and not (REPO / config).is_file():
        return f"{where}: --config {config} is neither a preset ({preset_names()}) nor a file in the repository"
    if getattr(args, "space", None) and not (REPO / args.space).is_file():
        return f"{where}: --space {args.space} is not a file in the repository"
    for value in vars(args).values():  # no literal credentials in a command line
        if re.search(r"(AKIA[0-9A-Z]{12,}|aws_secret|password=)", str(value), re.I):
            return f"{where}: a credential in the command line"
    return None


@pytest.mark.parametrize("where,line", ENTRYPOINTS, ids=[w for w, _ in ENTRYPOINTS])
def test_entrypoint_is_a_real_crfgan_command(where, line):
    """Renaming a subcommand, a flag or a preset, or moving a space file, fails here."""
    problem = _entrypoint_problem(where, line)
    assert problem is None, problem


def test_the_entrypoint_check_catches_renames():
    ok = "crfgan train --data s3://b/shards --config tiny --storage s3://b/runs"
    assert _entrypoint_problem("x", ok) is None
    assert "parser rejects" in _entrypoint_problem("x", ok.replace("--data", "--dataset"))
    assert "not a crfgan subcommand" in _entrypoint_problem("x", ok.replace("train", "fit", 1))
    assert "neither a preset" in _entrypoint_problem("x", ok.replace("tiny", "ct1024"))


def test_manifests_hold_no_literal_credentials():
    """S3 keys and tokens come from Secrets (secretRef/secretKeyRef), never from a value written in infra/."""
    pat = re.compile(r"(AWS_SECRET_ACCESS_KEY|AWS_ACCESS_KEY_ID|RAY_AUTH_TOKEN|PASSWORD)\s*[:=]\s*['\"]?[^\s'\"$]+", re.I)
    for p in YAMLS:
        for n, line in enumerate(p.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            assert not pat.search(code), f"{p}:{n}: literal credential: {line.strip()}"
