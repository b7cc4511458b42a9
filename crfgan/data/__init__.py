"""The scans shipped inside the package (see README.md here): what ``crfgan demo`` and the benches run on."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

SHIPPED = ("example_ct.nii.gz", "FLAIR.nii.gz")


def shipped_scans() -> list[str]:
    """Paths of the shipped scans in the installed package; a missing one is an error naming it."""
    base = resources.files("crfgan.data")
    paths = [str(base / name) for name in SHIPPED]
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"shipped scans missing from the installed package: {missing}")
    return paths
