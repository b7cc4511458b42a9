import importlib.util
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
PACKAGE_DATA = REPO / "crfgan" / "data"
# What the suite needs beyond the package's own dependencies: locally a missing one skips the tests that use it
# (saying why); in CI (CI=true, as GitHub Actions and most runners set it) it stops the run before any test.
HARD_DEPENDENCIES = ("ray", "moto.server", "mlflow")


def in_ci(env=os.environ) -> bool:
    return env.get("CI", "").strip().lower() in ("1", "true", "yes")


def missing_requirements(data_dir: Path = SHARED_DATA, modules=HARD_DEPENDENCIES) -> list[str]:
    missing = [] if data_dir.is_dir() else [f"real scans at {data_dir} (../shared/data beside the repository)"]
    for m in modules:
        try:
            found = importlib.util.find_spec(m) is not None
        except ModuleNotFoundError:  # the parent package is absent
            found = False
        if not found:
            missing.append(f"the Python module {m!r}")
    return missing


def pytest_configure(config):
    if in_ci():
        missing = missing_requirements()
        if missing:
            raise pytest.UsageError("CI=true and the test suite lacks " + "; ".join(missing) +
                                    ": in CI that is an error, not a skip")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real scans in ../shared/data (skips, saying why, on a local clone without it; an error in CI)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent: real-scan tests need ../shared/data beside the repository")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _restore_mlflow_tracking_env():
    """``mlflow.set_tracking_uri`` also sets ``MLFLOW_TRACKING_URI`` in the process, and that variable wins over
    ``mlflow.tracking_uri``: restore it after each test so one test's store never receives the next test's runs."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before
