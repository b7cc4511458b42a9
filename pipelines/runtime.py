"""The Ray runtime every stage shares: join ``RAY_ADDRESS`` when set (e.g. under ``ray job submit``), else start a
local Ray with the embedded defaults."""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from pathlib import Path

# Ray-internal log lines that mean nothing to a user of a local Ray started here (no dashboard), silenced in every
# worker process by ``quiet_worker_logs``. Each entry says why; nothing else is filtered.
QUIET_LOGGERS = {
    # Ray Train v2's placement-group cleaner asks the State API, which needs the dashboard, whether the controller
    # lives; without one it warns "Failed to query Ray Train Controller actor state" every second of every training
    # run (95 lines in one demo). The groups it would release are released by pipelines.tune for stopped trials and
    # by Ray itself when the job ends.
    "ray.train.v2._internal.execution.controller.placement_group_cleaner": logging.ERROR,
    # "Progress bars disabled. To enable, set …": Ray Data's notice for the training input, whose bars we turn off
    # on purpose (pipelines.train)
    "ray.data._internal.progress": logging.ERROR,
}


# Ray-internal deprecation warnings raised by Ray's own code (not ours), printed by every training run's workers
QUIET_WARNINGS = (
    r"`ExecutionOptions.exclude_resources` is deprecated",  # Ray Train's DataConfig sets it (Ray 2.60)
)


def storage_uri(path: str) -> str:
    """Local paths become absolute (Ray Train needs that; trials and tasks run in other folders); URIs pass through."""
    return path if "://" in path else str(Path(path).expanduser().resolve())


def quiet_worker_logs() -> None:
    """``worker_process_setup_hook`` of a local Ray: apply ``QUIET_LOGGERS`` and ``QUIET_WARNINGS`` in each worker."""
    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    for pattern in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)


@contextlib.contextmanager
def data_context(**settings):
    """Set Ray Data context fields for one stage only and restore them after (stages share the driver). A dataset
    copies the context when it is created: create it inside the block."""
    import ray

    ctx = ray.data.DataContext.get_current()
    old = {k: getattr(ctx, k) for k in settings}
    for k, v in settings.items():
        setattr(ctx, k, v)
    try:
        yield ctx
    finally:
        for k, v in old.items():
            setattr(ctx, k, v)


def ensure_ray():
    import ray

    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS") or None
        # a cluster (RAY_ADDRESS) has its dashboard and its own logging settings: only a local Ray is quietened
        env = None if address else {"worker_process_setup_hook": "pipelines.runtime.quiet_worker_logs"}
        if not address:  # token authentication is on (the secure default); Ray's notice of it says how to opt out
            logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
        ray.init(address=address, include_dashboard=False, runtime_env=env)
    return ray
