"""Checkpoints without pickle: weights in safetensors, everything else in JSON.

A checkpoint folder holds
  ``weights.safetensors``    every network's state dict, keys prefixed ``<net>.`` (g., d., e., crf., …; g_ema. for
                             the EMA copy of G when ``train.ema_decay`` > 0: a generator loaded from the checkpoint
                             is then the EMA copy)
  ``config.json``            the config tree that built the networks
  ``optimizers.safetensors`` + ``optimizers.json``  optimizer tensors / their structure (for resume)
  ``state.json``             iteration, RNG states, extra metadata
A generator-only export (``save_generator``) holds ``generator.safetensors`` + ``config.json`` + ``metadata.json``
(what synthesis needs to write a correct file: spacing, orientation, intensity mapping…; see ``crfgan.synth``).
Loading uses ``safetensors.torch.load_file`` and ``json``: nothing is ever unpickled.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .config import Config, config_from_dict
from .generator import Generator
from .models import Networks, Optimizers, build_networks
from .storage import atomic_local_dir

GENERATOR_FILE = "generator.safetensors"
METADATA_FILE = "metadata.json"  # crfgan.synth.METADATA_FILE


def _contiguous(sd: dict) -> dict:
    return {k: v.detach().contiguous().cpu() for k, v in sd.items()}


def _flatten_optimizer(name: str, state: dict, tensors: dict) -> dict:
    """Optimizer state_dict → JSON structure, with tensors moved into ``tensors`` under unique keys."""

    def walk(obj, key):
        if isinstance(obj, torch.Tensor):
            tensors[key] = obj.detach().contiguous().cpu()
            return {"__tensor__": key}
        if isinstance(obj, dict):
            return {"__dict__": [[walk(k, f"{key}.k{i}"), walk(v, f"{key}.{i}")] for i, (k, v) in enumerate(obj.items())]}
        if isinstance(obj, (list, tuple)):
            return {"__list__": [walk(v, f"{key}.{i}") for i, v in enumerate(obj)], "tuple": isinstance(obj, tuple)}
        return obj

    return walk(state, f"opt.{name}")


def _unflatten(obj, tensors: dict):
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__dict__" in obj:
            return {_unflatten(k, tensors): _unflatten(v, tensors) for k, v in obj["__dict__"]}
        if "__list__" in obj:
            items = [_unflatten(v, tensors) for v in obj["__list__"]]
            return tuple(items) if obj.get("tuple") else items
    return obj


def rng_state() -> dict:
    state = {"torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode()}
    if torch.cuda.is_available():
        state["cuda"] = [base64.b64encode(s.numpy().tobytes()).decode() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict) -> None:
    t = np.frombuffer(base64.b64decode(state["torch"]), dtype=np.uint8).copy()
    torch.set_rng_state(torch.from_numpy(t))
    if "cuda" in state and torch.cuda.is_available():
        for i, s in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(torch.from_numpy(np.frombuffer(base64.b64decode(s), dtype=np.uint8).copy()), i)


def save_checkpoint(path: str | Path, cfg: Config, nets: Networks, opts: Optimizers | None, iteration: int,
                    extra: dict | None = None) -> Path:
    """Write a complete training checkpoint folder atomically."""
    path = Path(path)
    weights = {}
    for name, module in nets.items():
        for k, v in _contiguous(getattr(module, "module", module).state_dict()).items():
            weights[f"{name}.{k}"] = v
    with atomic_local_dir(path) as d:
        tmp = Path(d)
        save_file(weights, tmp / "weights.safetensors")
        if opts is not None:
            tensors: dict = {}
            structure = {k: _flatten_optimizer(k, o.state_dict(), tensors) for k, o in opts.opts.items()}
            save_file(tensors, tmp / "optimizers.safetensors")
            (tmp / "optimizers.json").write_text(json.dumps(structure))
        (tmp / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
        state = {"iteration": iteration, "rng": rng_state(), **(extra or {})}
        (tmp / "state.json").write_text(json.dumps(state, indent=2))
    return path


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu", nets: Networks | None = None,
                    opts: Optimizers | None = None) -> tuple[Config, Networks, dict]:
    """Load a checkpoint folder into ``nets``/``opts`` (built from its config when not given)."""
    path = Path(path)
    cfg = config_from_dict(json.loads((path / "config.json").read_text()))
    nets = nets or build_networks(cfg)
    weights = load_file(str(path / "weights.safetensors"), device=str(device))
    for name, module in nets.items():
        prefix = f"{name}."
        if name == "g_ema" and not any(k.startswith(prefix) for k in weights):
            prefix = "g."  # EMA switched on when resuming a run without one: the average starts from G
        sd = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
        getattr(module, "module", module).load_state_dict(sd)
    if opts is not None and (path / "optimizers.json").exists():
        tensors = load_file(str(path / "optimizers.safetensors"), device=str(device))
        structure = json.loads((path / "optimizers.json").read_text())
        opts.load_state_dict({k: _unflatten(v, tensors) for k, v in structure.items()})
    state = json.loads((path / "state.json").read_text())
    return cfg, nets, state


def save_generator(path: str | Path, cfg: Config, g: Generator, metadata: dict | None = None,
                   synthesis: dict | None = None) -> Path:
    """Export only the generator (what synthesis needs): ``generator.safetensors`` + ``config.json``, and
    ``metadata.json`` from ``synthesis`` (``crfgan.synth.generator_metadata``) when given."""
    path = Path(path)
    meta = {k: str(v) for k, v in (metadata or {}).items()}
    with atomic_local_dir(path) as d:
        save_file(_contiguous(getattr(g, "module", g).state_dict()), Path(d) / GENERATOR_FILE, metadata=meta)
        (Path(d) / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
        if synthesis is not None:
            (Path(d) / METADATA_FILE).write_text(json.dumps(synthesis, indent=2))
    return path


def generator_files(path: str | Path) -> dict[str, bytes]:
    """The files ``load_generator_files`` needs, as bytes (to ship a model to workers that cannot see ``path``)."""
    path = Path(path)
    names = [GENERATOR_FILE if (path / GENERATOR_FILE).exists() else "weights.safetensors", "config.json"]
    names += [METADATA_FILE] if (path / METADATA_FILE).exists() else []
    for n in names:
        if not (path / n).is_file():
            raise FileNotFoundError(f"{path}: no {n} (not a crfgan checkpoint or generator export)")
    return {n: (path / n).read_bytes() for n in names}


def load_generator_files(files: dict[str, bytes], device: str | torch.device = "cpu", where: str = "<model>") -> Generator:
    """``load_generator`` from in-memory files (``generator_files``); ``g.metadata`` is None without metadata.json."""
    from safetensors.torch import load as load_bytes

    cfg = config_from_dict(json.loads(files["config.json"]))
    g = Generator(cfg.model)
    if GENERATOR_FILE in files:
        sd = load_bytes(files[GENERATOR_FILE])
    elif "weights.safetensors" in files:  # a training checkpoint: its EMA copy of G when it has one, else G
        w = load_bytes(files["weights.safetensors"])
        prefix = "g_ema." if any(k.startswith("g_ema.") for k in w) else "g."
        sd = {k[len(prefix):]: v for k, v in w.items() if k.startswith(prefix)}
    else:
        raise FileNotFoundError(f"{where}: no {GENERATOR_FILE} or weights.safetensors (not a crfgan checkpoint)")
    g.load_state_dict(sd)
    g.config = cfg
    g.metadata = json.loads(files[METADATA_FILE]) if METADATA_FILE in files else None
    return g.to(device).eval()


def load_generator(path: str | Path, device: str | torch.device = "cpu") -> Generator:
    """A generator ready for ``render(z)`` from a generator export or a full training checkpoint (the checkpoint's
    EMA copy of G when it holds one).

    ``g.config`` is its config; ``g.metadata`` the synthesis metadata (None for a folder without metadata.json).
    """
    path = Path(path)
    if not (path / GENERATOR_FILE).exists() and not (path / "weights.safetensors").exists():
        raise FileNotFoundError(f"{path}: no {GENERATOR_FILE} or weights.safetensors (not a crfgan checkpoint)")
    return load_generator_files(generator_files(path), device, where=str(path))
