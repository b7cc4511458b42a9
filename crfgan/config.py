"""One typed config tree for the whole system: data, model, train, synth, tune, eval, mlflow.

Presets live in ``crfgan/configs/*.yaml``; each holds only the fields it changes from the defaults below
(the defaults are the reference CRF-GAN at 128³). Dotted overrides (``model.crf.iterations=5``) apply on top.
Unknown keys are errors that name the closest valid key.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

SIZES = (32, 64, 128, 256, 512)


class ConfigError(ValueError):
    """A config file or override that cannot be applied; the message names the key and the fix."""


@dataclass
class DataConfig:
    modality: str = "auto"  # ct | mri | auto (auto: CT when the intensities look like HU)
    spacing_mm: float = 0.0  # isotropic target spacing; 0 keeps the native spacing
    ct_window: tuple[float, float] = (-1024.0, 600.0)  # reference HU window, mapped to [-1, 1]
    mri_percentiles: tuple[float, float] = (0.5, 99.5)  # robust MRI range, mapped to [-1, 1]
    trim_empty_slices: bool = True  # drop all-background axial slices before fitting the cube
    fit: str = "crop_pad"  # crop_pad keeps the voxel size; resize squeezes the volume into the cube
    shard_target_mb: float = 64.0  # Parquet shards are cut by size, not by volume count
    val_fraction: float = 0.1  # split by a stable hash of the scan's content, never by patch
    max_error_fraction: float = 0.5  # preprocess exits non-zero above this fraction of failed inputs
    max_voxels: int = 1_000_000_000  # headers claiming more are refused before any allocation
    s3_endpoint: str = ""  # overrides AWS_ENDPOINT_URL for s3:// inputs and outputs
    task_retries: int = 2  # an input whose worker process dies (native crash, OOM kill) is retried this often, then
    # becomes an error row (stage "worker"); Ray Data's own default retries forever, so one such file hung the run


@dataclass
class CRFConfig:
    nodes: str = "slabs"  # slabs: depth slabs of A (the paper's cross-slab consistency); channels: the reference code
    num_nodes: int = 0  # 0: one node per rendered sub-volume (slabs) or the reference count S/4 (channels)
    iterations: int = 10  # mean-field iterations T (reference: 10)


@dataclass
class ModelConfig:
    arch: str = "crfgan"  # crfgan | hagan (the HA-GAN baseline: adds G^L, D^L and the sub-encoder, no CRF)
    image_size: int = 128  # S: the cube edge, one of SIZES
    latent_dim: int = 1024  # z
    base_channels: int = 32  # the reference's _c: G^A widths 16c,16c,8c,4c,2c; G^H width c
    embedding_channels: int = 0  # 0: 2 * base_channels (reference: 64)
    embedding_size: int = 0  # 0: S/4 (reference); S/8 also works (one more renderer stage)
    d_channels: int = 512  # D^H width (reference: 512)
    d_low_channels: int = 256  # HA-GAN D^L width (reference: 256)
    sub_encoder_channels: int = 256  # HA-GAN sub-encoder E^G width (reference: 256)
    activation_checkpointing: bool = False  # recompute G^A blocks in backward: less memory, more compute
    crf: CRFConfig = field(default_factory=CRFConfig)

    @property
    def emb_channels(self) -> int:
        return self.embedding_channels or 2 * self.base_channels

    @property
    def emb_size(self) -> int:
        return self.embedding_size or self.image_size // 4

    @property
    def slab_depth(self) -> int:
        """Axial slices in one rendered sub-volume: S/8."""
        return self.image_size // 8

    @property
    def emb_slab_depth(self) -> int:
        """Embedding slices behind one sub-volume."""
        return self.slab_depth * self.emb_size // self.image_size


@dataclass
class TrainConfig:
    batch_size: int = 4  # reference: 4
    iterations: int = 80_000  # reference: 80k
    lr_g: float = 1e-4
    lr_d: float = 4e-4
    lr_e: float = 1e-4
    lr_crf: float = 4e-4
    beta1: float = 0.0  # Adam betas (0, 0.999) as in the reference
    beta2: float = 0.999
    crf_weight_start: float = 0.5  # w in w·CRF + (1-w)·D for the generator loss
    crf_weight_decay_iters: int = 60_000  # w falls linearly to 0 by this iteration
    share_fakes: bool = True  # one G forward per iteration feeds the D, G and CRF sub-steps (see step.py)
    amp: str = "none"  # none | bf16 | fp16 autocast (GPU)
    channels_last: bool = False  # channels_last_3d memory format for networks and inputs (GPU tensor cores)
    compile: bool = False  # torch.compile each network in place (state_dict keys unchanged); first steps are slow
    seed: int = 0
    log_every: int = 20
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    val_every: int = 500
    # Ray Train scaling
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: int = 1
    max_failures: int = 2
    storage_path: str = "runs"
    run_name: str = "crfgan"


@dataclass
class SynthConfig:
    num_volumes: int = 4
    seed: int = 0
    tiled: bool = True  # render G^H over embedding slabs with a halo instead of one pass
    slab_embedding_slices: int = 0  # embedding slices per tile before the halo; 0: E/16 (2 at 128³, 4 at 256³)
    halo: int = 1  # embedding slices of context on each side (G^H's receptive field needs 1)
    norm_stats: str = "global"  # global: equals the one-pass render; slab: per-tile GroupNorm statistics


@dataclass
class TuneConfig:
    num_samples: int = 4  # trials drawn from the space (grid search: repetitions of the whole grid)
    max_concurrent_trials: int = 0  # 0: as many as the cluster's CPUs/GPUs hold (trial driver + its workers each)
    metric: str = "val_l1"  # used when the space file names none
    mode: str = "min"
    grace_period: int = 0  # ASHA: training iterations before a trial can be stopped; 0: train.val_every
    reduction_factor: int = 3  # ASHA: keep the best 1/reduction_factor at each rung
    search: str = "random"  # random | grid (every choice becomes a grid axis; ranges are still sampled)
    scheduler: str = "asha"  # asha (early stopping) | fifo (every trial runs to the end: fair comparisons)
    driver_cpus: float = 1.0  # CPUs of each trial's driver (the Tune function that runs the TorchTrainer)


@dataclass
class EvalConfig:
    num_volumes: int = 4
    quick_volumes: int = 8  # volumes rendered for fd_ssl_quick at every train.val_every (0: score off)
    ssl_steps: int = 100  # SimCLR steps of the SSL feature extractor (crfgan.metrics.features)
    ssl_batch: int = 16  # regions per SSL step (two views each)
    ssl_width: int = 8  # extractor width w: features are 2 * 4w values
    ssl_seed: int = 0
    ssl_max_volumes: int = 64  # real training volumes the extractor trains on (and whose features are cached)
    med3d_weights: str = ""  # MedicalNet ResNet-50 weights (safetensors); empty: fid_med3d/mmd_med3d skipped
    med3d_sha256: str = ""  # the weights' expected SHA-256 (required with med3d_weights)


@dataclass
class MlflowConfig:
    tracking_uri: str = ""  # empty: MLFLOW_TRACKING_URI, else a local sqlite file
    experiment: str = "crfgan"
    registered_model: str = "crfgan-generator"


@dataclass
class Config:
    name: str = "default"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)

    def to_dict(self) -> dict:
        return _to_plain(self)

    def flat(self) -> dict[str, typing.Any]:
        """Flat ``{"model.crf.iterations": 10, ...}`` for logging (MLflow params)."""
        out: dict[str, typing.Any] = {}

        def walk(prefix: str, d: dict) -> None:
            for k, v in d.items():
                key = f"{prefix}{k}"
                if isinstance(v, dict):
                    walk(key + ".", v)
                else:
                    out[key] = v

        walk("", self.to_dict())
        return out

    def hash(self) -> str:
        """Stable short hash of the whole tree (sha256 of its canonical JSON)."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def data_hash(self) -> str:
        """Hash of what prepared volumes depend on (``data.*`` that shapes voxels, and S): preprocessing's cache key,
        so changing training settings never forces a re-run of preprocessing."""
        skip = ("s3_endpoint", "max_error_fraction", "task_retries")
        d = {k: v for k, v in self.to_dict()["data"].items() if k not in skip}
        blob = json.dumps({"data": d, "image_size": self.model.image_size}, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def validate(self) -> Config:
        m = self.model
        _check(m.arch in ("crfgan", "hagan"), "model.arch", f"must be crfgan or hagan, got {m.arch!r}")
        _check(m.image_size in SIZES, "model.image_size", f"must be one of {SIZES}, got {m.image_size}")
        _check(
            m.emb_size in (m.image_size // 4, m.image_size // 8),
            "model.embedding_size",
            f"must be S/4={m.image_size // 4} or S/8={m.image_size // 8}, got {m.emb_size}",
        )
        _check(m.emb_size >= 4, "model.embedding_size", "must be at least 4 (G^A starts from a 4³ grid)")
        _check(m.emb_slab_depth >= 1, "model.embedding_size", "leaves less than one embedding slice per sub-volume")
        _check(m.base_channels >= 8, "model.base_channels", f"must be >= 8 (GroupNorm has 8 groups), got {m.base_channels}")
        _check(m.crf.nodes in ("slabs", "channels"), "model.crf.nodes", f"must be slabs or channels, got {m.crf.nodes!r}")
        _check(m.crf.iterations >= 0, "model.crf.iterations", "must be >= 0")
        n = crf_num_nodes(m)
        if m.crf.nodes == "slabs":
            _check(m.emb_size % n == 0, "model.crf.num_nodes", f"must divide the embedding depth {m.emb_size}, got {n}")
        else:
            _check(m.emb_channels % n == 0, "model.crf.num_nodes",
                   f"must divide the embedding channels {m.emb_channels}, got {n}")
        _check(self.train.amp in ("none", "bf16", "fp16"), "train.amp", f"must be none, bf16 or fp16, got {self.train.amp!r}")
        _check(self.train.batch_size >= 1, "train.batch_size", "must be >= 1")
        _check(self.synth.norm_stats in ("global", "slab"), "synth.norm_stats", "must be global or slab")
        _check(self.synth.halo >= 0 and self.synth.slab_embedding_slices >= 0, "synth.halo", "halo and slab must be >= 0")
        _check(self.data.fit in ("crop_pad", "resize"), "data.fit", "must be crop_pad or resize")
        _check(self.data.modality in ("auto", "ct", "mri"), "data.modality", "must be auto, ct or mri")
        e = self.eval
        _check(e.quick_volumes == 0 or e.quick_volumes >= 2, "eval.quick_volumes", "must be 0 (off) or >= 2")
        _check(e.ssl_steps >= 1 and e.ssl_batch >= 2 and e.ssl_width >= 1 and e.ssl_max_volumes >= 1, "eval.ssl_steps",
               "ssl_steps, ssl_width and ssl_max_volumes must be >= 1 and ssl_batch >= 2")
        _check(not e.med3d_weights or len(e.med3d_sha256) == 64, "eval.med3d_sha256",
               "must be the 64-hex SHA-256 of eval.med3d_weights")
        _check(self.data.task_retries >= 0, "data.task_retries", f"must be >= 0, got {self.data.task_retries}")
        tu = self.tune
        _check(tu.mode in ("min", "max"), "tune.mode", f"must be min or max, got {tu.mode!r}")
        _check(tu.search in ("random", "grid"), "tune.search", f"must be random or grid, got {tu.search!r}")
        _check(tu.scheduler in ("asha", "fifo"), "tune.scheduler", f"must be asha or fifo, got {tu.scheduler!r}")
        _check(tu.num_samples >= 1, "tune.num_samples", "must be >= 1")
        _check(tu.max_concurrent_trials >= 0 and tu.grace_period >= 0, "tune.grace_period",
               "grace_period and max_concurrent_trials must be >= 0")
        _check(tu.reduction_factor >= 2, "tune.reduction_factor", "must be >= 2")
        _check(tu.driver_cpus >= 0, "tune.driver_cpus", "must be >= 0")
        return self


def crf_num_nodes(m: ModelConfig) -> int:
    if m.crf.num_nodes:
        return m.crf.num_nodes
    if m.crf.nodes == "slabs":
        return m.emb_size // m.emb_slab_depth  # one node per sub-volume G^H renders: 8
    return m.image_size // 4  # the reference: 16 / 32 / 64 at 64³ / 128³ / 256³


def _check(ok: bool, key: str, msg: str) -> None:
    if not ok:
        raise ConfigError(f"{key} {msg}")


def _to_plain(obj):
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple):
        return list(obj)
    return obj


def valid_keys(cls=Config, prefix: str = "") -> list[str]:
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        t = hints[f.name]
        if dataclasses.is_dataclass(t):
            keys += valid_keys(t, f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def _unknown(key: str) -> ConfigError:
    close = difflib.get_close_matches(key, valid_keys(), n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"unknown config key {key!r}{hint}")


def _coerce(value, t, key: str):
    origin = typing.get_origin(t)
    try:
        if t is bool:
            if isinstance(value, str):
                if value.lower() in ("true", "1", "yes", "on"):
                    return True
                if value.lower() in ("false", "0", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if t is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if t is float:
            return float(value)
        if t is str:
            return str(value)
        if origin is tuple:
            args = typing.get_args(t)
            if isinstance(value, str):
                value = yaml.safe_load(value)
            if len(value) != len(args):
                raise ValueError(value)
            return tuple(_coerce(v, a, key) for v, a in zip(value, args))
    except (TypeError, ValueError):
        raise ConfigError(f"{key} expects {getattr(t, '__name__', t)}, got {value!r}") from None
    return value


def _set(cfg: Config, key: str, value) -> None:
    parts = key.split(".")
    node = cfg
    for p in parts[:-1]:
        if not dataclasses.is_dataclass(node) or p not in {f.name for f in dataclasses.fields(node)}:
            raise _unknown(key)
        node = getattr(node, p)
    last = parts[-1]
    if not dataclasses.is_dataclass(node) or last not in {f.name for f in dataclasses.fields(node)}:
        raise _unknown(key)
    t = typing.get_type_hints(type(node))[last]
    if dataclasses.is_dataclass(t):
        if not isinstance(value, dict):
            raise ConfigError(f"{key} is a section; set its fields, e.g. {key}.{dataclasses.fields(t)[0].name}=…")
        for k, v in value.items():
            _set(cfg, f"{key}.{k}", v)
        return
    setattr(node, last, _coerce(value, t, key))


def _apply_mapping(cfg: Config, mapping: dict, prefix: str = "") -> None:
    for k, v in mapping.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            _apply_mapping(cfg, v, key + ".")
        else:
            _set(cfg, key, v)


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("crfgan.configs").iterdir() if p.name.endswith(".yaml"))


def load_config(name_or_path: str | Path | None = None, overrides: typing.Iterable[str] = ()) -> Config:
    """Build a config from defaults, a preset name or YAML path, then ``key=value`` overrides."""
    cfg = Config()
    if name_or_path:
        p = Path(name_or_path)
        if p.suffix in (".yaml", ".yml") or p.exists():
            if not p.is_file():
                raise ConfigError(f"config file {p} does not exist")
            text = p.read_text(encoding="utf-8")
            cfg.name = p.stem
        else:
            res = resources.files("crfgan.configs") / f"{name_or_path}.yaml"
            if not res.is_file():
                close = difflib.get_close_matches(str(name_or_path), preset_names(), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f"; presets: {', '.join(preset_names())}"
                raise ConfigError(f"unknown config preset {name_or_path!r}{hint}")
            text = res.read_text(encoding="utf-8")
            cfg.name = str(name_or_path)
        try:
            mapping = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config {name_or_path} is not valid YAML: {e}") from None
        if not isinstance(mapping, dict):
            raise ConfigError(f"config {name_or_path} must be a mapping of sections")
        cfg.name = mapping.pop("name", cfg.name)
        _apply_mapping(cfg, mapping)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. model.crf.iterations=5)")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw.strip() else ""
        _set(cfg, key.strip(), value)
    return cfg.validate()


def config_from_dict(d: dict) -> Config:
    """Rebuild a config from ``to_dict()`` output (checkpoints, MLflow)."""
    cfg = Config()
    d = dict(d)
    cfg.name = d.pop("name", cfg.name)
    _apply_mapping(cfg, d)
    return cfg.validate()
