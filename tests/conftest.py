from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
PACKAGE_DATA = REPO / "crfgan" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real scans in ../shared/data (skips, saying why, on a clone without it)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent: real-scan tests need ../shared/data beside the repository")
    return SHARED_DATA
