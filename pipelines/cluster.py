"""Multi-node rules every stage checks before any work starts.

On a cluster the driver, the Ray Data tasks and the training workers run on different nodes, so a path is only
usable when every node sees the same thing there: ``s3://`` URIs, or a folder on a mount shared by every node.
A local path that another node cannot see fails late (rank 0's first checkpoint, the first MLflow metric, a shard
written where the driver cannot read it), so :func:`require_shared` checks it up front, on every node that is up:
the driver writes a marker file with a random name, and a zero-CPU task pinned to each node looks for it.
When the nodes that are up cannot hold the work (an autoscaling cluster whose workers have not started), the nodes
to come cannot be checked and a local path is refused. A local Ray started by the stage itself (no ``RAY_ADDRESS``)
is one machine: nothing to check. Every refusal is one line that says what to set instead.
"""

from __future__ import annotations

import glob
import os
import secrets
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

STORAGE_HINT = "use --storage s3://bucket/prefix or a folder on a mount shared by every node"
MLFLOW_HINT = "set MLFLOW_TRACKING_URI=http://HOST:PORT (an mlflow server) or put the store on a shared mount"
OUTPUT_HINT = "use --output s3://bucket/prefix or a folder on a mount shared by every node"
INPUT_HINT = "use s3:// inputs or a folder on a mount shared by every node"
PROBE_TIMEOUT_S = 120


class NotSharedError(FileNotFoundError):
    """A local path that some Ray node cannot see (a FileNotFoundError: stages report it as one line, exit 2)."""


def is_local(path: str) -> bool:
    return "://" not in str(path) or str(path).startswith("file://")


def _local(path: str) -> str:
    return str(path)[len("file://"):] if str(path).startswith("file://") else str(path)


def s3_storage(uri: str, endpoint: str) -> str:
    """``s3://b/p`` + an S3-compatible endpoint (``http://HOST:PORT``) → ``s3://b/p?endpoint_override=HOST:PORT&
    scheme=http``: pyarrow, which Ray Train writes checkpoints with, ignores ``AWS_ENDPOINT_URL``."""
    if not uri.startswith("s3://") or not endpoint:
        return uri
    p = urlsplit(uri)
    query = dict(parse_qsl(p.query))
    if "endpoint_override" in query:
        return uri
    e = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
    query.update(endpoint_override=e.netloc, scheme=e.scheme or "http")
    return urlunsplit((p.scheme, p.netloc, p.path, urlencode(query), p.fragment))


def sqlite_folder(tracking_uri: str | None) -> str | None:
    """The folder of a local MLflow store (``sqlite:///…`` or a plain path), else None."""
    if not tracking_uri:
        return None
    if tracking_uri.startswith("sqlite:///"):
        return str(Path(tracking_uri[len("sqlite:///"):]).parent)
    if is_local(tracking_uri):
        return _local(tracking_uri)
    return None


def train_paths(storage: str, tracking_uri: str | None) -> list[tuple[str, str, str, bool]]:
    """(what, path, hint, is_output) for the local paths a training run writes from several nodes."""
    out = []
    if is_local(storage):
        out.append(("checkpoint storage", _local(storage), STORAGE_HINT, True))
    folder = sqlite_folder(tracking_uri)
    if folder is not None:
        out.append((f"the MLflow store {tracking_uri}", folder, MLFLOW_HINT, True))
    return out


def preprocess_paths(inputs: list[str], output: str) -> list[tuple[str, str, str, bool]]:
    out = []
    for i in inputs:
        if is_local(i):
            root = _local(i)
            if glob.has_magic(root):  # a glob: its fixed leading folder must be there
                root = root[: min(root.find(c) for c in "*?[" if c in root)].rsplit("/", 1)[0] or "/"
            out.append(("input", root, INPUT_HINT, False))
    if is_local(output):
        out.append(("output", _local(output), OUTPUT_HINT, True))
    return out


def _fits(nodes: list[dict], need: dict) -> bool:
    total: dict = {}
    for n in nodes:
        for k, v in n.get("Resources", {}).items():
            total[k] = total.get(k, 0) + v
    return all(total.get(k, 0) >= v for k, v in need.items() if v)


def _sees(paths: list[str]) -> tuple[str, list[bool]]:
    import ray

    return ray.util.get_node_ip_address(), [os.path.exists(p) for p in paths]


def _probe(ray, nodes: list[dict], paths: list[str]) -> dict[str, list[bool]]:
    """node id → whether each path exists there, asked by a zero-CPU task pinned to each node."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(num_cpus=0, max_retries=1)(_sees)
    refs = {n["NodeID"]: task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
            .remote(paths) for n in nodes}
    return {nid: ray.get(ref, timeout=PROBE_TIMEOUT_S)[1] for nid, ref in refs.items()}


def require_shared(ray, items: list[tuple[str, str, str, bool]], stage: str, need: dict) -> None:
    """Raise :class:`NotSharedError` (one line) unless every local path in ``items`` is seen by every node.

    ``items``: (what, path, hint, is_output); outputs are created here and checked through a marker file.
    ``need``: the resources the stage's work needs ({"CPU": 4, "GPU": 4}); when the nodes up cannot hold it, more
    nodes will join, and a local path cannot be checked on them.
    """
    if not items or not os.environ.get("RAY_ADDRESS"):
        return  # no local path, or a local Ray this stage started: one machine
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) <= 1 and _fits(nodes, need):
        return
    what = ", ".join(f"{w} {p}" for w, p, _, _ in items)
    hints = "; ".join(dict.fromkeys(h for _, _, h, _ in items))
    if not _fits(nodes, need):
        raise NotSharedError(f"{what} is local, and the {len(nodes)} Ray node(s) up cannot hold this {stage} "
                             f"({need}), so nodes still to join cannot be checked: {hints}")
    markers, checks = [], []
    try:
        for _, path, _, is_output in items:
            if is_output:
                Path(path).mkdir(parents=True, exist_ok=True)
                m = Path(path) / f".crfgan-shared-{secrets.token_hex(8)}"
                m.write_bytes(b"")
                markers.append(m)
                checks.append(str(m))
            else:
                checks.append(path)
        seen = _probe(ray, nodes, checks)
    finally:
        for m in markers:
            m.unlink(missing_ok=True)
    ips = {n["NodeID"]: n.get("NodeManagerAddress", n["NodeID"][:8]) for n in nodes}
    bad = [(items[i], nid) for nid, flags in seen.items() for i, ok in enumerate(flags) if not ok]
    if bad:
        (w, p, h, _), nid = bad[0]
        others = len({n for _, n in bad})
        raise NotSharedError(f"{w} {p} is a local path that Ray node {ips[nid]} ({others} of {len(nodes)} nodes) "
                             f"cannot see; {h}")
