"""The local stack behind ``make up`` / ``make down``: a Ray head (token auth) plus one Ray worker node, an
``mlflow server`` (sqlite backend, artifacts on the S3 endpoint) and a moto S3 server, all on 127.0.0.1.

    python infra/local/stack.py up      # start, wait for every health check, print the env vars for jobs
    python infra/local/stack.py down    # stop exactly what ``up`` started (by process group), nothing else
    python infra/local/stack.py env     # print the env vars again

The Ray head runs with ``--num-cpus 0`` like a KubeRay head: job drivers run on it, every task and training worker
runs on the worker node, so each job crosses nodes. Settings (environment): ``CRFGAN_STACK_DIR`` (state, logs,
token, sqlite db; default ``outputs/stack`` under the current directory), ports ``CRFGAN_S3_PORT`` (9000),
``CRFGAN_MLFLOW_PORT`` (5000), ``CRFGAN_RAY_PORT`` (6380, GCS), ``CRFGAN_RAY_DASHBOARD_PORT`` (8265, job server),
``CRFGAN_WORKER_CPUS`` (2). S3 credentials: ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` when set, else the
placeholder ``testing`` (moto accepts any); they reach the Ray nodes' environment, never a job's runtime env.
Each process is started in its own session and stopped by signalling that process group (never ``ray stop``, which
would stop every Ray on the machine); ``down`` checks a recorded start time so a recycled pid is never signalled.
Standard library only, so it runs before anything is imported; the binaries come from this interpreter's folder.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent
BUCKETS = ("crfgan", "mlflow")  # data, shards and checkpoints | MLflow artifacts


def _dir() -> Path:
    return Path(os.environ.get("CRFGAN_STACK_DIR", "outputs/stack")).resolve()


def _port(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def _free_port() -> int:
    """A port free on every address, between Ray's worker ports (10002-19999) and the kernel's ephemeral range
    (32768+): a port from the ephemeral range can be taken by an outgoing connection before Ray binds it."""
    rng = secrets.SystemRandom()
    for _ in range(200):
        port = rng.randrange(20000, 32000)
        try:
            with socket.socket() as s:
                s.bind(("0.0.0.0", port))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port in 20000-32000")


def _start_time(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _aws_env() -> dict:
    env = {k: os.environ.get(k, "testing") for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    if os.environ.get("AWS_SESSION_TOKEN"):
        env["AWS_SESSION_TOKEN"] = os.environ["AWS_SESSION_TOKEN"]
    return {**env, "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1",
            "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required"}


def _spawn(state: dict, name: str, cmd: list[str], env: dict, port: int | None) -> subprocess.Popen:
    log = _dir() / f"{name}.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                stdin=subprocess.DEVNULL)
    state["services"].append({"name": name, "pid": proc.pid, "start": _start_time(proc.pid), "port": port,
                              "log": str(log)})
    _save(state)
    return proc


def _save(state: dict) -> None:
    p = _dir() / "state.json"
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(p)


def _wait(url: str, proc: subprocess.Popen, name: str, timeout: float, up=(200,), headers=None, check=None) -> None:
    """Poll ``url`` until it answers with a status in ``up`` (and ``check(body)`` holds); bounded by ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}; see {_dir() / (name + '.log')}")
        try:
            req = urllib.request.Request(url, headers=headers or {})
            with urllib.request.urlopen(req, timeout=3) as r:
                if r.status in up and (check is None or check(r.read())):
                    return
        except urllib.error.HTTPError as e:
            if e.code in up and check is None:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} not healthy after {timeout:.0f} s ({url}); see {_dir() / (name + '.log')}")
        time.sleep(0.5)


def _retrying(start, wait, attempts: int = 3) -> None:
    """Start a Ray node and wait for it; when ``ray start`` exits during start-up (Ray gives a node a fixed 30 s to
    register, which a busy machine can miss), stop what it left in its process group and start it again."""
    for attempt in range(1, attempts + 1):
        proc = start()
        try:
            wait(proc)
            return
        except RuntimeError as e:
            if proc.poll() is None or attempt == attempts:
                raise
            print(f"stack: {e}; retrying ({attempt}/{attempts - 1})", file=sys.stderr)
            if _group_alive(proc.pid):
                os.killpg(proc.pid, signal.SIGKILL)


def _alive_nodes(body: bytes) -> int:
    data = json.loads(body).get("data", {}).get("summary", [])
    return sum(1 for n in data if n.get("raylet", {}).get("state") == "ALIVE")


def env_lines(state: dict) -> list[str]:
    p = state["ports"]
    return [
        f"export RAY_API_SERVER_ADDRESS=http://127.0.0.1:{p['dashboard']}",  # ray job CLI; not RAY_ADDRESS (ray.init)
        "export RAY_AUTH_MODE=token",
        f"export RAY_AUTH_TOKEN_PATH={state['token_path']}",
        f"export AWS_ENDPOINT_URL=http://127.0.0.1:{p['s3']}",
        f"export MLFLOW_TRACKING_URI=http://127.0.0.1:{p['mlflow']}",
        "export AWS_REQUEST_CHECKSUM_CALCULATION=when_required AWS_DEFAULT_REGION=us-east-1",
        # the shell fills these in: a credential's value is never printed
        'export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-testing}" AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-testing}"',
    ]


def up() -> int:
    d = _dir()
    d.mkdir(parents=True, exist_ok=True)
    if (d / "state.json").exists():
        print(f"stack: already up ({d / 'state.json'}); run 'make down' first", file=sys.stderr)
        return 1
    ports = {"s3": _port("CRFGAN_S3_PORT", 9000), "mlflow": _port("CRFGAN_MLFLOW_PORT", 5000),
             "gcs": _port("CRFGAN_RAY_PORT", 6380), "dashboard": _port("CRFGAN_RAY_DASHBOARD_PORT", 8265)}
    token_path = d / "ray_token"
    token_path.write_text(secrets.token_hex(32))
    token_path.chmod(0o600)
    temp = tempfile.mkdtemp(prefix="crs", dir="/tmp")  # short: Ray's unix socket paths have a length limit
    state = {"dir": str(d), "ports": ports, "token_path": str(token_path), "ray_temp": temp, "services": []}
    _save(state)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_", "AWS_"))}
    base["PATH"] = f"{BIN}{os.pathsep}{base.get('PATH', '')}"
    aws = _aws_env()
    s3_url = f"http://127.0.0.1:{ports['s3']}"
    try:
        # 1. S3 endpoint (moto binds 0.0.0.0 by default: -H 127.0.0.1)
        proc = _spawn(state, "s3", [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(ports["s3"])],
                      {**base, **aws}, ports["s3"])
        _wait(f"{s3_url}/moto-api/", proc, "s3", 60)
        for b in BUCKETS:  # anonymous PUT bucket: moto does not check signatures
            req = urllib.request.Request(f"{s3_url}/{b}", method="PUT")
            try:
                urllib.request.urlopen(req, timeout=10).close()
            except urllib.error.HTTPError as e:
                if e.code != 409:
                    raise
        # 2. MLflow server: sqlite backend, artifacts proxied to the S3 endpoint (clients need no S3 credentials)
        proc = _spawn(state, "mlflow", [
            str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(ports["mlflow"]), "--workers", "1",
            "--backend-store-uri", f"sqlite:///{d / 'mlflow.db'}", "--artifacts-destination", "s3://mlflow/artifacts",
        ], {**base, **aws, "MLFLOW_S3_ENDPOINT_URL": s3_url}, ports["mlflow"])
        _wait(f"http://127.0.0.1:{ports['mlflow']}/health", proc, "mlflow", 120)
        # 3. Ray head (token auth, no CPUs: drivers only) and one worker node, each with its own free agent ports
        ray_env = {**base, **aws, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path)}
        common = ["--block", "--node-ip-address=127.0.0.1", "--num-gpus=0", "--disable-usage-stats"]

        def agent_ports():
            return [f"--{k}-port={_free_port()}" for k in ("dashboard-agent-listen", "dashboard-agent-grpc",
                                                           "metrics-export", "runtime-env-agent")]

        dash = f"http://127.0.0.1:{ports['dashboard']}"
        _retrying(lambda: _spawn(state, "ray-head", [
            str(BIN / "ray"), "start", "--head", f"--port={ports['gcs']}", "--num-cpus=0", "--dashboard-host=127.0.0.1",
            f"--dashboard-port={ports['dashboard']}", f"--ray-client-server-port={_free_port()}", f"--temp-dir={temp}",
            *common, *agent_ports()], ray_env, ports["dashboard"]),
            lambda proc: _wait(f"{dash}/api/version", proc, "ray-head", 120, up=(200, 401)))
        # its own temp dir: two nodes sharing one would share (and garbage-collect) each other's job working dirs
        auth = {"Authorization": f"Bearer {token_path.read_text().strip()}"}
        _retrying(lambda: _spawn(state, "ray-worker", [
            str(BIN / "ray"), "start", f"--address=127.0.0.1:{ports['gcs']}", f"--temp-dir={temp}/w",
            f"--num-cpus={int(os.environ.get('CRFGAN_WORKER_CPUS', 2))}", *common, *agent_ports()], ray_env, None),
            lambda proc: _wait(f"{dash}/nodes?view=summary", proc, "ray-worker", 120, headers=auth,
                               check=lambda body: _alive_nodes(body) >= 2))
    except (RuntimeError, OSError) as e:
        print(f"stack: {e}; stopping what started", file=sys.stderr)
        down()
        return 1
    print(f"stack up (state, logs and token in {d}):")
    for s in state["services"]:
        print(f"  {s['name']:<11} pid {s['pid']:<8} " + (f"127.0.0.1:{s['port']:<6} " if s["port"] else " " * 17)
              + f"log {s['log']}")
    print("point jobs at it:")
    print("\n".join("  " + line for line in env_lines(state)))
    return 0


def _alive(s: dict) -> bool:
    return s.get("start") is not None and _start_time(s["pid"]) == s["start"]


def down() -> int:
    p = _dir() / "state.json"
    if not p.exists():
        print(f"stack: nothing to stop ({p} absent)")
        return 0
    state = json.loads(p.read_text())
    live = [s for s in state["services"] if _alive(s)]  # a dead or recycled pid is never signalled
    for s in reversed(live):  # workers before the head, the head before MLflow and S3
        try:
            os.killpg(s["pid"], signal.SIGTERM)
        except ProcessLookupError:
            pass
    # every group (leader and children: raylet, gcs, mlflow's workers) gets 20 s in all, then SIGKILL
    deadline = time.monotonic() + 20
    while any(_group_alive(s["pid"]) for s in live) and time.monotonic() < deadline:
        time.sleep(0.2)
    for s in live:
        if _group_alive(s["pid"]):
            try:
                os.killpg(s["pid"], signal.SIGKILL)
            except ProcessLookupError:
                pass
        print(f"stopped {s['name']} (pid {s['pid']})")
    # SIGKILL is delivered at once but a loaded machine takes a moment to end the processes: return when they are
    # gone (bounded), so that "down" means down
    deadline = time.monotonic() + 15
    while any(_group_alive(s["pid"]) for s in live) and time.monotonic() < deadline:
        time.sleep(0.2)
    temp = state.get("ray_temp", "")
    if temp.startswith(tempfile.gettempdir() + "/crs"):
        shutil.rmtree(temp, ignore_errors=True)
    p.unlink()
    return 0


def _group_alive(pgid: int) -> bool:
    """Whether any live (non-zombie) process is still in the process group ``pgid``."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


def main(argv: list[str]) -> int:
    cmd = argv[1] if len(argv) > 1 else ""
    if cmd == "up":
        return up()
    if cmd == "down":
        return down()
    if cmd == "env":
        p = _dir() / "state.json"
        if not p.exists():
            print("stack: not up", file=sys.stderr)
            return 1
        print("\n".join(env_lines(json.loads(p.read_text()))))
        return 0
    print("usage: stack.py up|down|env", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
