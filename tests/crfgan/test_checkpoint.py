import io
import json

import numpy as np
import pytest
import torch

from crfgan.checkpoint import load_checkpoint, load_generator, save_checkpoint, save_generator
from crfgan.config import load_config
from crfgan.models import build_networks, build_optimizers
from crfgan.step import train_step


@pytest.fixture
def trained():
    cfg = load_config("tiny")
    torch.manual_seed(0)
    nets = build_networks(cfg)
    opts = build_optimizers(cfg, nets)
    real = torch.rand(2, 1, 32, 32, 32) * 2 - 1
    for it in range(2):
        train_step(nets, opts, real, it, cfg, np.random.default_rng(it))
    return cfg, nets, opts


@pytest.mark.parametrize("arch", ["crfgan", "hagan"])
def test_checkpoint_round_trip_is_identical(tmp_path, arch):
    cfg = load_config("tiny", [f"model.arch={arch}"])
    torch.manual_seed(0)
    nets, real = build_networks(cfg), torch.rand(2, 1, 32, 32, 32) * 2 - 1
    opts = build_optimizers(cfg, nets)
    train_step(nets, opts, real, 0, cfg, np.random.default_rng(0))
    save_checkpoint(tmp_path / "ck", cfg, nets, opts, 1, {"note": "x"})
    cfg2, nets2, state = load_checkpoint(tmp_path / "ck")
    opts2 = build_optimizers(cfg2, nets2)
    load_checkpoint(tmp_path / "ck", nets=nets2, opts=opts2)
    assert cfg2 == cfg and state["iteration"] == 1 and state["note"] == "x"
    for (name, m1), (_, m2) in zip(nets.items(), nets2.items()):
        sd1, sd2 = m1.state_dict(), m2.state_dict()
        assert sd1.keys() == sd2.keys(), name
        assert all(torch.equal(sd1[k], sd2[k]) for k in sd1), name
    # one more identical step from both proves the optimizer state came back too
    for n, o in ((nets, opts), (nets2, opts2)):
        torch.manual_seed(5)
        train_step(n, o, real, 1, cfg, np.random.default_rng(9))
    assert all(torch.equal(p, q) for p, q in zip(nets.g.parameters(), nets2.g.parameters()))


def test_generator_export_renders_the_same(tmp_path, trained):
    cfg, nets, _ = trained
    save_generator(tmp_path / "gen", cfg, nets.g, {"run": "abc"})
    g = load_generator(tmp_path / "gen")
    z = torch.randn(1, cfg.model.latent_dim)
    nets.g.eval()
    assert torch.equal(g.render(z), nets.g.render(z))
    # a full training checkpoint also serves as a generator source
    save_checkpoint(tmp_path / "ck", cfg, nets, None, 2)
    assert torch.equal(load_generator(tmp_path / "ck").render(z), nets.g.render(z))


def test_checkpoint_files_are_safetensors_and_json(tmp_path, trained):
    cfg, nets, opts = trained
    save_checkpoint(tmp_path / "ck", cfg, nets, opts, 2)
    names = sorted(p.name for p in (tmp_path / "ck").iterdir())
    assert names == ["config.json", "optimizers.json", "optimizers.safetensors", "state.json", "weights.safetensors"]


class Payload:
    """Unpickling this creates ``marker``: a visible side effect, as a hostile pickle's code would have."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.mark.parametrize("target", ["gen/generator.safetensors", "ck/weights.safetensors", "ck/optimizers.safetensors"])
def test_a_pickle_in_place_of_weights_never_runs(tmp_path, trained, target):
    cfg, nets, opts = trained
    save_generator(tmp_path / "gen", cfg, nets.g)
    save_checkpoint(tmp_path / "ck", cfg, nets, opts, 2)
    marker = tmp_path / "pwned"
    buf = io.BytesIO()
    torch.save({"weight": Payload(marker)}, buf)
    (tmp_path / target).write_bytes(buf.getvalue())  # a torch.save pickle posing as weights
    torch.load(io.BytesIO(buf.getvalue()), weights_only=False)  # the payload is live: unpickling it runs open()
    assert marker.exists()
    marker.unlink()
    with pytest.raises(Exception):  # noqa: B017 — any refusal will do; what matters is that nothing ran
        if target.startswith("gen"):
            load_generator(tmp_path / "gen")
        else:
            load_checkpoint(tmp_path / "ck", nets=build_networks(cfg), opts=build_optimizers(cfg, build_networks(cfg)))
    assert not marker.exists()


def test_missing_weights_name_the_folder(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "config.json").write_text(json.dumps(load_config("tiny").to_dict()))
    with pytest.raises(FileNotFoundError, match="not a crfgan checkpoint"):
        load_generator(tmp_path / "x")


def test_a_class_conditional_checkpoint_renders_each_class(tmp_path):
    cfg = load_config("tiny", ["model.num_classes=2", "model.class_names=[ct, mri]"])
    torch.manual_seed(0)
    nets = build_networks(cfg)
    opts = build_optimizers(cfg, nets)
    real = torch.rand(2, 1, 32, 32, 32) * 2 - 1
    for it in range(2):
        train_step(nets, opts, real, it, cfg, np.random.default_rng(it), labels=torch.tensor([0, 1]))
    save_checkpoint(tmp_path / "ck", cfg, nets, opts, 2)
    save_generator(tmp_path / "gen", cfg, nets.g)
    nets.g.eval()
    z = torch.randn(1, cfg.model.latent_dim)
    for source in ("ck", "gen"):
        g = load_generator(tmp_path / source)
        assert g.cfg.class_names == ["ct", "mri"]
        vols = {name: g.render(z, class_index=g.class_index([name])) for name in g.cfg.class_names}
        for name, vol in vols.items():
            assert vol.shape == (1, 1, 32, 32, 32)
            assert torch.equal(vol, nets.g.render(z, class_index=torch.tensor([cfg.model.class_names.index(name)])))
        assert not torch.equal(vols["ct"], vols["mri"])  # the class changes the volume
    with pytest.raises(ValueError, match="unknown class 'pet'; valid classes: ct, mri"):
        g.class_index(["pet"])
    with pytest.raises(ValueError, match="pass class_index"):
        g.render(z)
