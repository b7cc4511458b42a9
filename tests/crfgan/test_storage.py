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


def test_every_local_output_gets_the_umask_permissions(tmp_path):
    """Checkpoint folders and their files, generator exports, NIfTI volumes and benchmark JSON: 0o666/0o777 & ~umask."""
    import numpy as np

    from pipelines.bench.table import emit
    from crfgan.checkpoint import save_checkpoint, save_generator
    from crfgan.config import load_config
    from crfgan.io import write_nifti
    from crfgan.models import build_networks

    cfg = load_config("tiny")
    nets = build_networks(cfg)
    old = os.umask(0o027)
    try:
        ck = save_checkpoint(tmp_path / "ck", cfg, nets, None, 1)
        save_checkpoint(tmp_path / "ck", cfg, nets, None, 2)  # replacing an existing folder
        gen = save_generator(tmp_path / "gen", cfg, nets.g)
        vol = write_nifti(np.zeros((8, 8, 8), np.float32), (1.0, 1.0, 1.0), tmp_path / "v.nii.gz")
        emit("t", [{"a": 1}], str(tmp_path / "b.json"))
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(os.stat(p).st_mode)  # noqa: E731
    assert mode(ck) == mode(gen) == 0o750  # mkdtemp alone would leave 0700
    files = [*ck.iterdir(), *gen.iterdir(), vol, tmp_path / "b.json"]
    assert len(files) >= 6 and all(mode(f) == 0o640 for f in files), {str(f): oct(mode(f)) for f in files}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.json", "ck", "gen", "v.nii.gz"]  # no temporaries left
    assert '"iteration": 2' in (ck / "state.json").read_text()


def test_failed_folder_write_leaves_the_old_folder(tmp_path):
    from crfgan.storage import atomic_local_dir

    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "old").write_text("x")
    with pytest.raises(RuntimeError), atomic_local_dir(tmp_path / "ck") as d:
        (open(os.path.join(d, "new"), "w")).close()
        raise RuntimeError("writer died")
    assert os.listdir(tmp_path) == ["ck"] and os.listdir(tmp_path / "ck") == ["old"]
