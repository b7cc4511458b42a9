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
import os
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
    val_sources: str = ""  # glob on the source URI (e.g. "*heldout*"): matching volumes go to val whatever the hash
    max_error_fraction: float = 0.5  # preprocess exits non-zero above this fraction of failed inputs
    max_voxels: int = 1_000_000_000  # headers claiming more are refused before any allocation
    s3_endpoint: str = ""  # overrides AWS_ENDPOINT_URL for s3:// inputs and outputs
    task_retries: int = 2  # an input whose worker process dies (native crash, OOM kill) is retried this often, then
    # becomes an error row (stage "worker"); Ray Data's own default retries forever, so one such file hung the run
    min_slices: int = 16  # a scan with fewer voxels than this along any axis is refused (not stretched into a cube)
    min_extent_mm: float = 30.0  # … or covering less than this many mm along any axis
    spacing_range_mm: tuple[float, float] = (0.05, 50.0)  # voxel spacing outside this range is refused as implausible
    keep_staging: bool = False  # keep _staging/ (a second copy of every prepared volume) after a successful run


@dataclass
class CRFConfig:
    nodes: str = "channels"  # channels: channel groups of A, as the reference code; slabs: depth slabs of A (an option)
    num_nodes: int = 0  # 0: the reference count S/4 (channels) or one node per rendered sub-volume (slabs)
    iterations: int = 10  # mean-field iterations T (reference: 10)
    pairwise: str = "sum"  # sum: Σ_j over N nodes, as the reference (grows with N); mean: Σ_j / N (scale-free in N)


@dataclass
class ModelConfig:
    arch: str = "crfgan"  # crfgan | hagan (the HA-GAN baseline: adds G^L, D^L and the sub-encoder, no CRF)
    image_size: int = 128  # S: the cube edge, one of SIZES
    latent_dim: int = 1024  # z
    base_channels: int = 32  # the reference's _c: G^A widths 16c,16c,8c,4c,2c; G^H width c
    embedding_channels: int = 0  # 0: 2 * base_channels (reference: 64)
    embedding_size: int = 0  # 0: S/4 (reference); S/8 also works (one more renderer stage)
    d_channels: int = 512  # D^H width (reference: 512)
    d_minibatch_std: int = 0  # D^H minibatch-stddev group size (a stabiliser, not the reference; divides the batch); 0: off
    d_low_channels: int = 256  # HA-GAN D^L width (reference: 256)
    sub_encoder_channels: int = 256  # HA-GAN sub-encoder E^G width (reference: 256)
    activation_checkpointing: bool = False  # recompute G^A blocks in backward: less memory, more compute
    fused_upsample: bool = True  # conv(up2(x)) as 8 phase convs of 2³ summed taps: the same function, 27/8 fewer MACs
    num_classes: int = 0  # 0: unconditional; K > 0: the reference's num_class mode (one-hot class joins z, D class head)
    lambda_class: float = 0.1  # weight of the generator's class cross-entropy (reference --lambda-class 0.1)
    class_names: list[str] = field(default_factory=list)  # index → name; the trainer fills it from train.class_column
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
    share_fakes: bool = False  # true: one G forward feeds the D, G and CRF sub-steps (faster, not the reference; step.py)
    # Stabilisers (off by default and in the paper presets; algorithm changes, see crfgan/step.py and the README)
    instance_noise: float = 0.0  # sigma of Gaussian noise added to D's inputs (model scale [-1, 1]); 0: off
    instance_noise_iters: int = 2000  # the sigma falls linearly to 0 by this iteration
    r1_gamma: float = 0.0  # R1 penalty gamma/2 * E|grad_x D(x_real)|^2 on D's real inputs; 0: off
    r1_every: int = 1  # lazy R1: applied every k-th D step, scaled by k
    ema_decay: float = 0.0  # EMA copy of G (decay, warm-up min(decay, (1+i)/(10+i))) for rendering/scores; 0: off
    amp: str = "none"  # none | bf16 | fp16 autocast (GPU)
    channels_last: bool = False  # channels_last_3d memory format for networks and inputs (GPU tensor cores)
    compile: bool = False  # torch.compile each network in place (state_dict keys unchanged); first steps are slow
    seed: int = 0
    log_every: int = 20
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    val_every: int = 500
    class_column: str = "modality"  # shard column whose values are the classes when model.num_classes > 0
    # Ray Train scaling
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: int = 1
    max_failures: int = 2
    storage_path: str = "runs"
    run_name: str = "crfgan"


@dataclass
class SynthConfig:
    seed: int = 0
    tiled: bool = True  # render G^H over embedding slabs with a halo instead of one pass
    slab_embedding_slices: int = 0  # embedding slices per tile before the halo; 0: E/16 (2 at 128³, 4 at 256³)
    halo: int = 1  # embedding slices of context on each side (G^H's receptive field needs 1)
    norm_stats: str = "global"  # global: equals the one-pass render; train: each sub-volume rendered exactly as in
    # training (E/8 embedding slices, no halo, its own GroupNorm statistics); slab: per-tile statistics on the tiles above
    # crfgan synthesize: a Ray Data actor pool, each actor renders and writes one volume at a time
    actors: int = 0  # 0: one per GPU share when the cluster has GPUs, else one per cpus_per_actor CPUs
    cpus_per_actor: float = 1.0  # CPUs (and torch threads) per actor
    gpus_per_actor: float = 1.0  # GPU share per actor where GPUs exist; a fraction (0.5) puts several actors on one
    gzip: str = "isal"  # isal | zlib | zlib-ng: the gzip implementation for .nii.gz (crfgan bench synthesize)
    gzip_level: int = 2  # isal 0-3, zlib/zlib-ng 1-9


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
    score_volumes: int = 16  # volumes rendered for quality_score (Tune's objective) at every train.val_every (0: off)
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
        skip = ("s3_endpoint", "max_error_fraction", "task_retries", "keep_staging")
        d = {k: v for k, v in self.to_dict()["data"].items() if k not in skip}
        blob = json.dumps({"data": d, "image_size": self.model.image_size}, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def validate(self) -> Config:
        """Check every field; a bad one raises ``ConfigError`` naming its key, the allowed values and the value.
        One function per section (``_validate_model`` …), in the order of the file."""
        _validate_model(self.model)
        _validate_train(self.train, self.model)
        _validate_synth(self.synth)
        _validate_mlflow(self.mlflow)
        _validate_data(self.data)
        _validate_eval(self.eval)
        _validate_tune(self.tune)
        return self


def _validate_model(m: ModelConfig) -> None:
    """model.*"""
    _check(m.arch in ("crfgan", "hagan"), "model.arch", f"must be crfgan or hagan, got {m.arch!r}")
    _check(m.image_size in SIZES, "model.image_size", f"must be one of {SIZES}, got {m.image_size}")
    _check(m.embedding_size >= 0, "model.embedding_size", f"must be >= 0 (0: S/4), got {m.embedding_size}")
    _check(
        m.emb_size in (m.image_size // 4, m.image_size // 8),
        "model.embedding_size",
        f"must be S/4={m.image_size // 4} or S/8={m.image_size // 8}, got {m.emb_size}",
    )
    _check(m.emb_size >= 4, "model.embedding_size", "must be at least 4 (G^A starts from a 4³ grid)")
    _check(m.emb_slab_depth >= 1, "model.embedding_size", "leaves less than one embedding slice per sub-volume")
    _check(m.base_channels >= 8, "model.base_channels", f"must be >= 8 (GroupNorm has 8 groups), got {m.base_channels}")
    for key in ("latent_dim", "d_channels", "d_low_channels", "sub_encoder_channels"):
        _positive(f"model.{key}", getattr(m, key))
    _check(m.embedding_channels >= 0, "model.embedding_channels", f"must be >= 0 (0: 2 × base_channels), "
           f"got {m.embedding_channels}")
    _check(m.crf.nodes in ("slabs", "channels"), "model.crf.nodes", f"must be slabs or channels, got {m.crf.nodes!r}")
    _check(m.crf.iterations >= 0, "model.crf.iterations", f"must be >= 0, got {m.crf.iterations}")
    _check(m.crf.num_nodes >= 0, "model.crf.num_nodes", f"must be >= 0 (0: the default count), got {m.crf.num_nodes}")
    _check(m.crf.pairwise in ("sum", "mean"), "model.crf.pairwise", f"must be sum or mean, got {m.crf.pairwise!r}")
    _check(m.num_classes >= 0, "model.num_classes", f"must be >= 0, got {m.num_classes}")
    _check(m.lambda_class >= 0, "model.lambda_class", f"must be >= 0, got {m.lambda_class}")
    _check(not m.class_names or len(m.class_names) == m.num_classes, "model.class_names",
           f"lists {len(m.class_names)} names but model.num_classes={m.num_classes}")
    _check(len(set(m.class_names)) == len(m.class_names), "model.class_names", f"has duplicates: {m.class_names}")
    n = crf_num_nodes(m)
    if m.crf.nodes == "slabs":
        _check(m.emb_size % n == 0, "model.crf.num_nodes", f"must divide the embedding depth {m.emb_size}, got {n}")
    else:
        _check(m.emb_channels % n == 0, "model.crf.num_nodes",
               f"must divide the embedding channels {m.emb_channels}, got {n}")


def _validate_train(t: TrainConfig, m: ModelConfig) -> None:
    """train.* (and model.d_minibatch_std, which must divide the batch)"""
    _check(t.amp in ("none", "bf16", "fp16"), "train.amp", f"must be none, bf16 or fp16, got {t.amp!r}")
    for key in ("batch_size", "iterations", "log_every", "checkpoint_every", "val_every", "keep_checkpoints",
                "num_workers", "cpus_per_worker", "crf_weight_decay_iters"):
        _positive(f"train.{key}", getattr(t, key))
    for key in ("lr_g", "lr_d", "lr_e", "lr_crf"):
        _check(getattr(t, key) > 0, f"train.{key}", f"must be > 0, got {getattr(t, key)}")
    for key in ("beta1", "beta2"):
        v = getattr(t, key)
        _check(0.0 <= v < 1.0, f"train.{key}", f"must be in [0, 1), got {v}")
    _fraction("train.crf_weight_start", t.crf_weight_start)
    _check(t.instance_noise >= 0, "train.instance_noise", f"must be >= 0 (0: off), got {t.instance_noise}")
    _positive("train.instance_noise_iters", t.instance_noise_iters)
    _check(t.r1_gamma >= 0, "train.r1_gamma", f"must be >= 0 (0: off), got {t.r1_gamma}")
    _positive("train.r1_every", t.r1_every)
    _check(0.0 <= t.ema_decay < 1.0, "train.ema_decay", f"must be in [0, 1) (0: off), got {t.ema_decay}")
    g = m.d_minibatch_std
    _check(g == 0 or (g >= 2 and t.batch_size % g == 0), "model.d_minibatch_std",
           f"must be 0 (off) or a group size >= 2 that divides train.batch_size={t.batch_size}, got {g}")
    _check(t.max_failures >= -1, "train.max_failures", f"must be >= 0 (or -1: unlimited), got {t.max_failures}")
    _check(t.seed >= 0, "train.seed", f"must be >= 0, got {t.seed}")
    _check(bool(t.run_name.strip()) and "/" not in t.run_name, "train.run_name",
           f"must be a non-empty name without '/', got {t.run_name!r}")
    _check(bool(t.storage_path.strip()), "train.storage_path", "must not be empty")


def _validate_synth(sy: SynthConfig) -> None:
    """synth.*"""
    _check(sy.seed >= 0, "synth.seed", f"must be >= 0, got {sy.seed}")
    _check(sy.norm_stats in ("global", "train", "slab"), "synth.norm_stats",
           f"must be global, train or slab, got {sy.norm_stats!r}")
    _check(sy.halo >= 0, "synth.halo", f"must be >= 0, got {sy.halo}")
    _check(sy.slab_embedding_slices >= 0, "synth.slab_embedding_slices",
           f"must be >= 0 (0: E/16), got {sy.slab_embedding_slices}")
    _check(sy.gzip in ("isal", "zlib", "zlib-ng"), "synth.gzip", f"must be isal, zlib or zlib-ng, got {sy.gzip!r}")
    _check(0 <= sy.gzip_level <= (3 if sy.gzip == "isal" else 9), "synth.gzip_level",
           f"must be 0-3 for isal, 0-9 for zlib/zlib-ng, got {sy.gzip_level}")
    _check(sy.actors >= 0 and sy.cpus_per_actor > 0 and 0 < sy.gpus_per_actor <= 1, "synth.actors",
           "actors must be >= 0, cpus_per_actor > 0 and 0 < gpus_per_actor <= 1")


def _validate_mlflow(mf: MlflowConfig) -> None:
    """mlflow.*"""
    _check(bool(mf.experiment), "mlflow.experiment", "must not be empty")
    _check(bool(mf.registered_model), "mlflow.registered_model", "must not be empty")


def _validate_data(d: DataConfig) -> None:
    """data.*"""
    _check(d.fit in ("crop_pad", "resize"), "data.fit", f"must be crop_pad or resize, got {d.fit!r}")
    _check(d.modality in ("auto", "ct", "mri"), "data.modality", f"must be auto, ct or mri, got {d.modality!r}")
    _check(d.spacing_mm >= 0, "data.spacing_mm", f"must be >= 0 (0 keeps the native spacing), got {d.spacing_mm}")
    lo, hi = d.ct_window
    _check(lo < hi, "data.ct_window", f"must be [low, high] with low < high, got {list(d.ct_window)}")
    lo, hi = d.mri_percentiles
    _check(0.0 <= lo < hi <= 100.0, "data.mri_percentiles",
           f"must be [low, high] with 0 <= low < high <= 100, got {list(d.mri_percentiles)}")
    _check(d.shard_target_mb > 0, "data.shard_target_mb", f"must be > 0, got {d.shard_target_mb}")
    _check(0.0 <= d.val_fraction < 1.0, "data.val_fraction", f"must be in [0, 1), got {d.val_fraction}")
    _fraction("data.max_error_fraction", d.max_error_fraction)
    _positive("data.max_voxels", d.max_voxels)
    _check(d.task_retries >= 0, "data.task_retries", f"must be >= 0, got {d.task_retries}")
    _check(d.min_slices >= 1, "data.min_slices", f"must be >= 1, got {d.min_slices}")
    _check(d.min_extent_mm >= 0, "data.min_extent_mm", f"must be >= 0, got {d.min_extent_mm}")
    lo, hi = d.spacing_range_mm
    _check(0 < lo < hi, "data.spacing_range_mm", f"must be [low, high] with 0 < low < high, got "
           f"{list(d.spacing_range_mm)}")


def _validate_eval(e: EvalConfig) -> None:
    """eval.*"""
    _check(e.quick_volumes == 0 or e.quick_volumes >= 2, "eval.quick_volumes", "must be 0 (off) or >= 2")
    _check(e.score_volumes == 0 or e.score_volumes >= 2, "eval.score_volumes", "must be 0 (off) or >= 2")
    _check(e.ssl_steps >= 1 and e.ssl_batch >= 2 and e.ssl_width >= 1 and e.ssl_max_volumes >= 1, "eval.ssl_steps",
           "ssl_steps, ssl_width and ssl_max_volumes must be >= 1 and ssl_batch >= 2")
    _check(not e.med3d_weights or len(e.med3d_sha256) == 64, "eval.med3d_sha256",
           "must be the 64-hex SHA-256 of eval.med3d_weights")


def _validate_tune(tu: TuneConfig) -> None:
    """tune.*"""
    _check(tu.mode in ("min", "max"), "tune.mode", f"must be min or max, got {tu.mode!r}")
    _check(tu.search in ("random", "grid"), "tune.search", f"must be random or grid, got {tu.search!r}")
    _check(tu.scheduler in ("asha", "fifo"), "tune.scheduler", f"must be asha or fifo, got {tu.scheduler!r}")
    _check(tu.num_samples >= 1, "tune.num_samples", "must be >= 1")
    _check(tu.max_concurrent_trials >= 0 and tu.grace_period >= 0, "tune.grace_period",
           "grace_period and max_concurrent_trials must be >= 0")
    _check(tu.reduction_factor >= 2, "tune.reduction_factor", "must be >= 2")
    _check(tu.driver_cpus >= 0, "tune.driver_cpus", "must be >= 0")
    _check(bool(tu.metric), "tune.metric", "must not be empty")


def crf_num_nodes(m: ModelConfig) -> int:
    if m.crf.num_nodes:
        return m.crf.num_nodes
    if m.crf.nodes == "slabs":
        return m.emb_size // m.emb_slab_depth  # one node per sub-volume G^H renders: 8
    return m.image_size // 4  # the reference: 16 / 32 / 64 at 64³ / 128³ / 256³


def _check(ok: bool, key: str, msg: str) -> None:
    if not ok:
        raise ConfigError(f"{key} {msg}")


def _positive(key: str, value) -> None:
    _check(value >= 1, key, f"must be >= 1, got {value}")


def _fraction(key: str, value) -> None:
    _check(0.0 <= value <= 1.0, key, f"must be in [0, 1], got {value}")


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


# keys that once existed and were never read: dropped from stored configs (config.json of older checkpoints and
# models), refused as overrides
RETIRED_KEYS = frozenset({"synth.num_volumes", "eval.num_volumes"})


def _drop_retired(mapping: dict) -> dict:
    out = dict(mapping)
    for key in RETIRED_KEYS:
        section, field = key.split(".")
        if isinstance(out.get(section), dict) and field in out[section]:
            out[section] = {k: v for k, v in out[section].items() if k != field}
    return out


def _unknown(key: str) -> ConfigError:
    if key in RETIRED_KEYS:
        return ConfigError(f"config key {key!r} was retired (it never had an effect); remove it")
    close = difflib.get_close_matches(key, valid_keys(), n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"unknown config key {key!r}{hint}")


_BOOLS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _coerce(value, t, key: str):
    origin = typing.get_origin(t)
    if t is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _BOOLS:
            return _BOOLS[value.strip().lower()]
        raise ConfigError(f"{key} expects a boolean (true/false, 1/0, yes/no), got {value!r}")
    try:
        if t is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if t is float:
            return float(value)
        if t is str:
            return str(value)
        if origin is list:
            (arg,) = typing.get_args(t)
            if isinstance(value, str):
                value = yaml.safe_load(value) if value.strip() else []
            if not isinstance(value, (list, tuple)):
                raise ValueError(value)
            return [_coerce(v, arg, key) for v in value]
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


def set_key(cfg: Config, key: str, value, raw: str | None = None) -> None:
    """Set one dotted key (``train.lr_g``) on ``cfg``, coerced to the field's type; an unknown key or a value of the
    wrong type raises ``ConfigError``. The override API every loader and Tune's search space use (validate after)."""
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
    if raw is not None and t is bool:
        value = raw  # an override's text, not YAML's reading of it (YAML 1.1 also takes on/off/y/n as booleans)
    if dataclasses.is_dataclass(t):
        if not isinstance(value, dict):
            raise ConfigError(f"{key} is a section; set its fields, e.g. {key}.{dataclasses.fields(t)[0].name}=…")
        for k, v in value.items():
            set_key(cfg, f"{key}.{k}", v)
        return
    setattr(node, last, _coerce(value, t, key))


def _apply_mapping(cfg: Config, mapping: dict, prefix: str = "") -> None:
    for k, v in mapping.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            _apply_mapping(cfg, v, key + ".")
        else:
            set_key(cfg, key, v)


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("crfgan.configs").iterdir() if p.name.endswith(".yaml"))


def _looks_like_path(arg: str) -> bool:
    """A preset name wins over a file or folder of the same name in the working directory (``--config tiny`` with
    an output folder ``tiny/``); an argument is a path when it has a separator or a YAML suffix, or names an existing
    file that is not a preset."""
    if "/" in arg or os.sep in arg or arg.endswith((".yaml", ".yml")):
        return True
    return arg not in preset_names() and Path(arg).is_file()


def load_config(name_or_path: str | Path | None = None, overrides: typing.Iterable[str] = ()) -> Config:
    """Build a config from defaults, a preset name or YAML path, then ``key=value`` overrides."""
    cfg = Config()
    if name_or_path:
        p = Path(name_or_path)
        if _looks_like_path(str(name_or_path)):
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
        _apply_mapping(cfg, _drop_retired(mapping))
    return apply_overrides(cfg, overrides)


def parse_override(item: str) -> tuple[str, typing.Any, str]:
    """``key=value`` → (key, the value read as YAML (the text itself when it is not YAML), the raw text)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key=value (e.g. model.crf.iterations=5)")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value, raw


def apply_overrides(cfg: Config, overrides: typing.Iterable[str] = ()) -> Config:
    """``key=value`` overrides (``parse_override``) applied to ``cfg`` in place; returns it validated."""
    for item in overrides:
        key, value, raw = parse_override(item)
        set_key(cfg, key, value, raw=raw)
    return cfg.validate()


def config_from_dict(d: dict) -> Config:
    """Rebuild a config from ``to_dict()`` output (checkpoints, MLflow)."""
    cfg = Config()
    d = dict(d)
    cfg.name = d.pop("name", cfg.name)
    _apply_mapping(cfg, _drop_retired(d))
    return cfg.validate()
