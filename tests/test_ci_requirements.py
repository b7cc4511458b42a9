"""In CI a missing ../shared/data or test dependency stops the run; locally it skips with a reason."""

import os
import subprocess
import sys

from tests.conftest import REPO, in_ci, missing_requirements


def test_ci_flag_is_read_from_the_environment():
    assert in_ci({"CI": "true"}) and in_ci({"CI": "1"}) and not in_ci({}) and not in_ci({"CI": "false"})


def test_missing_data_and_modules_are_listed(tmp_path):
    missing = missing_requirements(tmp_path / "nowhere", ("json", "no_such_module_xyz", "no_such_pkg.sub"))
    assert len(missing) == 3 and "nowhere" in missing[0] and "'no_such_module_xyz'" in missing[1]
    assert missing_requirements(tmp_path, ("json",)) == []


def test_pytest_in_ci_without_the_data_is_an_error_not_a_skip(tmp_path):
    # a copy of the test tree in a checkout without ../shared/data beside it
    repo = tmp_path / "repo"
    (repo / "tests").mkdir(parents=True)
    (repo / "tests" / "conftest.py").write_text((REPO / "tests" / "conftest.py").read_text())
    (repo / "tests" / "test_x.py").write_text("def test_x():\n    pass\n")
    env = {**os.environ, "CI": "true", "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], cwd=repo, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "CI=true and the test suite lacks real scans" in r.stdout + r.stderr
    env["CI"] = "false"
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], cwd=repo, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
