"""The Ray runtime every stage shares: join ``RAY_ADDRESS`` when set (e.g. under ``ray job submit``), else start a
local Ray with the embedded defaults."""

from __future__ import annotations

import os


def ensure_ray():
    import ray

    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS") or None, include_dashboard=False)
    return ray
