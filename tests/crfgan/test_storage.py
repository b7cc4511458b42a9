import os
import stat

import pytest

from crfgan.storage import atomic_local_path, filesystem, write_bytes_atomic


def test_atomic_write_uses_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        fs, path = filesystem(str(tmp_path / "sub" / "a.bin"))
        write_bytes_atomic(fs, path, b"abc")
    finally:
        os.umask(old)
    assert (tmp_path / "sub" / "a.bin").read_bytes() == b"abc"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644  # mkstemp alone would leave 0600
    assert os.listdir(tmp_path / "sub") == ["a.bin"]


def test_failed_write_leaves_nothing_and_keeps_the_old_file(tmp_path):
    target = tmp_path / "v.nii.gz"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_local_path(target, suffix=".nii.gz") as tmp:
        assert tmp.endswith(".nii.gz") and os.path.dirname(tmp) == str(tmp_path)
        with open(tmp, "wb") as f:
            f.write(b"partial")
        raise RuntimeError("writer died")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["v.nii.gz"]
