"""The one training loop core (crfgan/loop.py): report windows, the checkpoint state both shells write and resume,
the earlier local layout, per-rank streams and the stop hook."""

import numpy as np
import pytest
import torch

from crfgan import loop
from crfgan.checkpoint import save_checkpoint
from crfgan.config import load_config
from crfgan.trainer import batches

CPU = torch.device("cpu")


def vols(n=2, size=32):
    return np.random.default_rng(0).uniform(-1, 1, (n, size, size, size)).astype(np.float32)


def cfg(*over):
    return load_config("tiny", ["train.share_fakes=false", *over])


def test_windows_fall_on_every_report_point_and_flag_checkpoints_and_validation():
    c = cfg("train.iterations=7", "train.log_every=2", "train.checkpoint_every=3", "train.val_every=5")
    s = loop.start(c, CPU)
    ws = list(loop.windows(s, batches(vols(), 2, s.rng), validate=True))
    assert [w.done for w in ws] == [2, 3, 4, 5, 6, 7]
    assert [w.done for w in ws if w.checkpoint] == [3, 6, 7] and [w.done for w in ws if w.validate] == [5, 7]
    assert [w.last for w in ws] == [False] * 5 + [True]
    m = ws[-1].metrics
    assert {"d_loss", "g_loss", "crf_loss", "e_loss", "its_per_s", "data_wait_frac"} <= set(m)
    assert m["iteration"] == 7 and m["samples_seen"] == 7 * 2 and 0 <= m["data_wait_frac"] <= 1
    s2 = loop.start(c, CPU)
    assert [w.done for w in loop.windows(s2, batches(vols(), 2, s2.rng))][-2:] == [6, 7]  # no val windows unasked


def test_stop_ends_the_run_after_the_iteration_it_said_so():
    s = loop.start(cfg("train.iterations=50", "train.log_every=20"), CPU)
    calls = []

    def stop():
        calls.append(1)
        return len(calls) >= 5

    ws = list(loop.windows(s, batches(vols(), 2, s.rng), stop=stop))
    assert [w.done for w in ws] == [5] and not ws[0].last


def test_non_finite_losses_stop_the_run_by_name():
    s = loop.start(cfg("train.iterations=2", "train.log_every=1"), CPU)
    bad = iter([(torch.full((2, 1, 32, 32, 32), float("nan")), None)] * 2)
    with pytest.raises(FloatingPointError, match="iteration 1: non-finite"):
        list(loop.windows(s, bad))


def test_a_checkpoint_resumes_bit_identically_with_the_lineage(tmp_path):
    def run(n, ck=None):
        s = loop.start(cfg(f"train.iterations={n}", "train.log_every=3", "train.checkpoint_every=3"), CPU,
                       checkpoint=ck)
        list(loop.windows(s, batches(vols(), 2, s.rng)))
        return s

    full = run(6)
    half = run(3)
    save_checkpoint(tmp_path / "ck", half.cfg, half.nets, half.opts, 3,
                    loop.checkpoint_state(half, 3, [loop.rng_states(half)], "local"))
    resumed = run(6, tmp_path / "ck")
    assert resumed.start_it == 3 and resumed.lineage == [[0, 3]] and resumed.state["trainer"] == "local"
    assert resumed.state["samples_seen"] == 6 and resumed.state["world_size"] == 1
    assert all(torch.equal(a, b) for a, b in zip(full.nets.g.parameters(), resumed.nets.g.parameters()))
    assert loop.checkpoint_state(resumed, 6, [], "ray", {"x": 1.0})["lineage"] == [[0, 3], [3, 6]]


def test_the_earlier_local_layout_is_read_as_rank_zeros_streams(tmp_path):
    s = loop.start(cfg(), CPU)
    s.rng.random(7)  # advance the numpy stream
    np_state = s.rng.bit_generator.state
    torch.manual_seed(123)
    save_checkpoint(tmp_path / "old", s.cfg, s.nets, s.opts, 4, {"np_rng": np_state})  # + "rng" (torch), no ranks
    expected_torch = torch.rand(3)
    r = loop.start(cfg(), CPU, checkpoint=tmp_path / "old")
    assert r.start_it == 4 and r.lineage == [] and r.rng.bit_generator.state == np_state
    assert torch.equal(torch.rand(3), expected_torch)  # the torch stream continues where it was saved


def test_a_rank_the_checkpoint_did_not_have_gets_fresh_streams(tmp_path):
    s = loop.start(cfg(), CPU)
    save_checkpoint(tmp_path / "ck", s.cfg, s.nets, s.opts, 2, loop.checkpoint_state(s, 2, [loop.rng_states(s)], "ray"))
    r0 = loop.start(cfg(), CPU, rank=0, world=2, checkpoint=tmp_path / "ck")
    a = r0.rng.random(4)
    r1 = loop.start(cfg(), CPU, rank=1, world=2, checkpoint=tmp_path / "ck")
    b = r1.rng.random(4)
    assert not np.allclose(a, b)
    assert r1.start_it == 2


def test_a_checkpoint_of_other_classes_is_refused(tmp_path):
    c = cfg("model.num_classes=2", "model.class_names=[ct, mri]")
    s = loop.start(c, CPU)
    save_checkpoint(tmp_path / "ck", c, s.nets, s.opts, 1, {})
    other = cfg("model.num_classes=2", "model.class_names=[mri, ct]")
    with pytest.raises(ValueError, match="was trained with classes"):
        loop.start(other, CPU, checkpoint=tmp_path / "ck")
