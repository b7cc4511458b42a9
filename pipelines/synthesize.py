"""``crfgan synthesize``: bulk synthetic volumes from a registered generator (or a checkpoint folder) with Ray Data.

    crfgan synthesize --model models:/crfgan-generator@champion --count 1000 --out s3://bucket/synthetic/2026-11-27
    crfgan synthesize --model models:/crfgan-generator/3 --count 10 --start 10 --seed 7 --out outputs/syn
    crfgan synthesize --model runs/tiny/checkpoint_000004 --count 4 --out outputs/syn --format nii

Ray Data over the volume indices [start, start + count): ``map_batches`` with an actor pool
(``ActorPoolStrategy``); one GPU (``synth.gpus_per_actor``, fractional allowed) per actor where the cluster has GPUs,
CPU actors otherwise (``synth.cpus_per_actor``). An actor renders one volume at a time with the halo-tiled renderer
and writes it itself, so memory is one volume per actor whatever the count.

Volume ``i`` has seed ``crfgan.synth.volume_seed(job seed, i)``: the same model, seed and ``i`` give the same voxels in
any order and with any number of actors. Under ``--out``::

    synthetic_000000.nii.gz   one volume (true RAS affine; CT int16 HU, MRI int16 + scl_slope: see crfgan.synth)
    synthetic_000000.json     its sidecar: model, version, alias, run id, seed, index, config hash, package version …
    job.json                  the job's identity: model (name, version, weights SHA-256), job seed, class, format and
                              the render settings (synth.tiled, slab_embedding_slices, halo, norm_stats)
    manifest.json             the job: counts written / skipped / failed / present, failures, throughput

Every file appears atomically (temp + rename locally, one PUT on S3) with the group's permissions (umask). A rerun
writes only the volumes that are missing; a job killed mid-way and rerun ends with exactly ``count`` volumes, none
rewritten. One job per output folder: a rerun deletes the hidden temporary files a killed local job left there, and
a rerun with another identity (another model version, seed, class, format or render setting) is refused before any
work, saying what differs; so is a folder that holds synthetic volumes without a job.json. ``--start``/``--count`` may
change between reruns of one job (to extend it). The output location is checked (a folder, writable) before the model
is fetched or Ray starts.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time

import numpy as np

from pipelines.args import add_config_arguments, check_output_folder

PREFIX = "synthetic_"
ROW_KEYS = ("index", "status", "t_start", "t_end", "render_s", "encode_s", "write_s", "bytes", "peak_rss_mb", "error")


JOB_FILE = "job.json"
RENDER_KEYS = ("tiled", "slab_embedding_slices", "halo", "norm_stats")  # synth settings that change the voxels


class JobMismatch(ValueError):
    """The output folder belongs to another synthesis job."""


def job_identity(model: dict, files: dict, job_seed: int, class_name: str | None, fmt: str, synth) -> dict:
    """What decides the voxels of volume i in a folder (what a rerun must share with the job that filled it)."""
    import hashlib

    h = hashlib.sha256()
    for name in sorted(k for k in files if k.endswith(".safetensors")) + ["config.json"]:
        h.update(files[name])
    return {"model": model["name"], "version": model["version"], "weights_sha256": h.hexdigest(),
            "job_seed": int(job_seed), "class": class_name, "format": fmt,
            "render": {k: getattr(synth, k) for k in RENDER_KEYS}}


def check_job(existing: dict | None, identity: dict, out: str, present: int) -> None:
    """Refuse a rerun into a folder of another job, in one line: what differs and what to do."""
    if existing is None:
        if present:
            raise JobMismatch(f"{out} holds {present} synthetic volume(s) but no {JOB_FILE} (another tool or an older "
                              "crfgan): pick an empty --out, or remove those files")
        return
    diffs = []
    if existing.get("weights_sha256") != identity["weights_sha256"]:
        label = lambda d: f"{d.get('model')} v{d['version']}" if d.get("version") else str(d.get("model"))  # noqa: E731
        diffs.append(f"model {label(existing)} there, {label(identity)} asked (other weights)")
    for key, flag in (("job_seed", "--seed"), ("class", "--class"), ("format", "--format")):
        if existing.get(key) != identity[key]:
            diffs.append(f"{flag} {existing.get(key)} there, {identity[key]} asked")
    for k, v in identity["render"].items():
        if (existing.get("render") or {}).get(k) != v:
            diffs.append(f"synth.{k}={(existing.get('render') or {}).get(k)} there, {v} asked")
    if diffs:
        raise JobMismatch(f"{out} belongs to another synthesis job ({'; '.join(diffs)}): rerun with the folder's "
                          "settings to complete it, or pick another --out")


def volume_name(index: int, fmt: str) -> str:
    return f"{PREFIX}{index:06d}.{fmt}"


def sidecar_name(index: int) -> str:
    return f"{PREFIX}{index:06d}.json"


class SynthActor:
    """One Ray Data actor: loads the generator once, then renders and writes one volume per index."""

    def __init__(self, files_ref, cfg_json: str, meta: dict, model: dict, out: str, endpoint: str, fmt: str,
                 job_seed: int, class_name: str | None, class_index: int | None, use_gpu: bool):
        import ray
        import torch

        from crfgan.checkpoint import load_generator_files
        from crfgan.config import config_from_dict
        from crfgan.memory import pin_mmap_threshold
        from crfgan.storage import filesystem
        from crfgan.synth import Synthesizer

        self.cfg = config_from_dict(json.loads(cfg_json))
        pin_mmap_threshold(256 * 2**10)  # per-volume buffers (≥ 256 KiB) go back to the OS when freed (crfgan.memory)
        torch.set_num_threads(max(1, int(self.cfg.synth.cpus_per_actor)))
        device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
        g = load_generator_files(ray.get(files_ref[0]), device, where=model["uri"])
        self.syn = Synthesizer(g, self.cfg, meta, device)
        self.meta, self.model, self.fmt, self.job_seed = meta, model, fmt, job_seed
        self.class_name, self.class_index = class_name, class_index
        self.fs, self.root = filesystem(out, endpoint)
        _reset_peak_rss()  # the peak reported per volume is then the rendering's, not the model load's

    def __call__(self, batch: dict) -> dict:
        rows = [self.one(int(i)) for i in batch["index"]]
        return {k: np.array([r[k] for r in rows]) for k in ROW_KEYS}

    def one(self, index: int) -> dict:
        from crfgan.storage import exists, join, write_bytes_atomic
        from crfgan.synth import sidecar, volume_seed

        row = dict.fromkeys(ROW_KEYS, 0.0) | {"index": index, "status": "skipped", "error": "", "t_start": time.time()}
        path = join(self.root, volume_name(index, self.fmt))
        try:
            if not exists(self.fs, path):  # a rerun (or a retried task) never rewrites a finished volume
                seed = volume_seed(self.job_seed, index)
                sy = self.cfg.synth
                r = self.syn.render_file(seed, self.class_index, self.fmt, sy.gzip, sy.gzip_level,
                                         descrip=f"crfgan {self.model['name']} v{self.model['version']} i{index}")
                t0 = time.perf_counter()
                side = sidecar(self.meta, self.model, index, self.job_seed, seed, self.class_name, self.cfg)
                write_bytes_atomic(self.fs, join(self.root, sidecar_name(index)), side)  # first: a volume that
                write_bytes_atomic(self.fs, path, r.data)  # exists always has its sidecar
                row |= {"status": "written", "render_s": r.render_s, "encode_s": r.encode_s,
                        "write_s": time.perf_counter() - t0, "bytes": float(len(r.data))}
        except Exception as e:  # noqa: BLE001 — one failed volume never stops the job; it is counted and listed
            row |= {"status": "failed", "error": f"{type(e).__name__}: {e}"[:500]}
        row["peak_rss_mb"] = _peak_rss_mb()
        row["t_end"] = time.time()
        return row


def _reset_peak_rss() -> bool:
    """Linux: reset this process's peak RSS (VmHWM) by writing 5 to /proc/self/clear_refs."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float:
    """Peak RSS since the last reset (Linux VmHWM), else the process's lifetime peak (getrusage)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    from crfgan.memory import peak_rss_bytes

    return peak_rss_bytes() / 2**20


def _present(fs, root: str, fmt: str) -> set[int]:
    """Indices of the finished volumes under ``root`` (one listing)."""
    from pyarrow.fs import FileSelector, FileType

    pat = re.compile(rf"^{PREFIX}(\d+)\.{re.escape(fmt)}$")
    out = set()
    for info in fs.get_file_info(FileSelector(root, allow_not_found=True)):
        m = pat.match(info.base_name)
        if info.type == FileType.File and m:
            out.add(int(m[1]))
    return out


def _drop_temporaries(fs, root: str) -> int:
    """Hidden temporary files a killed local job left (``crfgan.storage.atomic_local_path`` names)."""
    import pyarrow.fs as pafs

    if not isinstance(fs, pafs.LocalFileSystem):
        return 0  # S3 writes are single PUTs: nothing partial can exist
    n = 0
    for info in fs.get_file_info(pafs.FileSelector(root, allow_not_found=True)):
        if info.type == pafs.FileType.File and info.base_name.startswith(f".tmp-{PREFIX}"):
            fs.delete_file(info.path)
            n += 1
    return n


def job_config(model_files: dict, user_cfg):
    """The model's own config with the job's ``synth`` section (rendering, actors, gzip)."""
    from crfgan.config import config_from_dict

    cfg = config_from_dict(json.loads(model_files["config.json"]))
    cfg.synth = user_cfg.synth
    return cfg.validate()


def run(model_uri: str, count: int, out: str, cfg, start: int = 0, seed: int | None = None, fmt: str = "nii.gz",
        class_name: str | None = None, tracking_uri: str | None = None, log=print) -> dict:
    """The job without argument parsing; returns the job manifest (also written to ``out/manifest.json``)."""
    import os

    import ray

    import crfgan
    from crfgan.storage import exists, filesystem, join, read_bytes, s3_endpoint, write_bytes_atomic
    from crfgan.synth import check_metadata, class_index_for, generator_metadata
    from pipelines.registry import fetch_model
    from pipelines.runtime import data_context, ensure_ray
    from pipelines.tracking import lookup_tracking_uri, scrub_uri

    if count < 1:
        raise ValueError(f"--count must be at least 1, got {count}")
    if start < 0:
        raise ValueError(f"--start must be >= 0, got {start}")
    check_output_folder(out, "--out")
    if "://" not in str(out):
        out = os.path.abspath(os.path.expanduser(out))  # the actors write it: they run in another directory
    t0 = time.perf_counter()
    model = fetch_model(model_uri, tracking_uri or lookup_tracking_uri(cfg))
    files = model.pop("files")
    jcfg = job_config(files, cfg)
    if "metadata.json" in files:
        meta = check_metadata(json.loads(files["metadata.json"]), model_uri)
    else:
        meta = generator_metadata(jcfg)
        log(f"[synthesize] warning: {model_uri} has no metadata.json; spacing {meta['spacing_zyx_mm']} mm is assumed "
            f"and intensities are {meta['intensity']['unit']} in {meta['intensity']['range']}")
    class_index = class_index_for(class_name, meta.get("class_names") or getattr(jcfg.model, "class_names", []),
                                  f"model {model_uri}")
    job_seed = jcfg.synth.seed if seed is None else int(seed)
    endpoint = s3_endpoint(cfg.data.s3_endpoint)  # the job's, not the training's
    fs, root = filesystem(out, endpoint)
    if "://" not in str(out):
        os.makedirs(root, exist_ok=True)
    identity = job_identity(model, files, job_seed, class_name, fmt, jcfg.synth)
    job_path = join(root, JOB_FILE)
    existing = json.loads(read_bytes(fs, job_path)) if exists(fs, job_path) else None
    done = _present(fs, root, fmt)
    # without a job.json, volumes of either format are an unknown job's
    foreign = len(done | _present(fs, root, "nii" if fmt == "nii.gz" else "nii.gz")) if existing is None else 0
    check_job(existing, identity, scrub_uri(out), foreign)
    if existing is None:
        try:  # also the check that an s3:// --out is writable, before Ray starts
            write_bytes_atomic(fs, job_path, json.dumps(identity, indent=2).encode())
        except OSError as e:
            raise ValueError(f"--out {scrub_uri(out)}: cannot write there ({type(e).__name__}: {e})") from None
    cleaned = _drop_temporaries(fs, root)
    wanted = range(start, start + count)
    todo = [i for i in wanted if i not in done]
    log(f"[synthesize] {model['uri']} (version {model['version']}) → {scrub_uri(out)}: {count} volumes, "
        f"{count - len(todo)} already there" + (f", {cleaned} stale temporary files removed" if cleaned else ""))
    rows: list[dict] = []
    actors, use_gpu = 0, False
    if todo:
        ray = ensure_ray()
        res = ray.cluster_resources()
        sy = jcfg.synth
        use_gpu = res.get("GPU", 0) > 0
        actors = sy.actors or (int(res["GPU"] / sy.gpus_per_actor) if use_gpu else int(res.get("CPU", 1) // sy.cpus_per_actor))
        actors = max(1, min(actors, len(todo)))
        kwargs = {"files_ref": [ray.put(files)], "cfg_json": json.dumps(jcfg.to_dict()), "meta": meta, "model": model,
                  "out": out, "endpoint": endpoint, "fmt": fmt, "job_seed": job_seed, "class_name": class_name,
                  "class_index": class_index, "use_gpu": use_gpu}
        gpu = {"num_gpus": sy.gpus_per_actor} if use_gpu else {}
        # No per-operator CPU reservation: on a small machine it held the pool to one actor at a time.
        with data_context(op_resource_reservation_enabled=False):
            ds = ray.data.from_items([{"index": i} for i in todo], override_num_blocks=min(len(todo), 1000))
            ds = ds.map_batches(SynthActor, fn_constructor_kwargs=kwargs, batch_size=1, batch_format="numpy",
                                compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=sy.cpus_per_actor, **gpu)
            for r in ds.iter_rows():
                rows.append({k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()})
    elapsed = time.perf_counter() - t0
    written = [r for r in rows if r["status"] == "written"]
    failed = [r for r in rows if r["status"] == "failed"]
    present = len(_present(fs, root, fmt) & set(wanted))
    manifest = {
        "model": {**model, "uri": scrub_uri(model["uri"])}, "out": scrub_uri(out), "start": start, "count": count,
        "job_seed": job_seed, "format": fmt, "class": class_name,
        "counts": {"written": len(written), "skipped": count - len(written) - len(failed), "failed": len(failed),
                   "present": present},
        "failures": [{"index": r["index"], "error": r["error"]} for r in failed],
        "elapsed_s": round(elapsed, 3), "volumes_per_min": round(60 * len(written) / elapsed, 3) if elapsed else 0.0,
        "seconds": {k: round(sum(r[k] for r in written), 3) for k in ("render_s", "encode_s", "write_s")},
        # from the first volume's start to the last one's end: the job without model load and actor start-up
        "steady_s": round(max(r["t_end"] for r in written) - min(r["t_start"] for r in written), 3) if written else 0.0,
        "bytes_written": int(sum(r["bytes"] for r in written)),
        "actors": actors, "device": "gpu" if use_gpu else "cpu",
        "actor_peak_rss_mb": max((r["peak_rss_mb"] for r in rows), default=0.0),
        "metadata": meta, "config_hash": jcfg.hash(), "synth": jcfg.to_dict()["synth"],
        "package_version": crfgan.__version__, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_bytes_atomic(fs, join(root, "manifest.json"), json.dumps(manifest, indent=2).encode())
    c = manifest["counts"]
    for r in failed[:10]:
        log(f"[synthesize] volume {r['index']} failed: {r['error']}")
    log(f"synthesize: {c['written']} written, {c['skipped']} skipped, {c['failed']} failed in {elapsed:.1f} s "
        f"({manifest['volumes_per_min']:.1f} volumes/min, {actors} actor(s) on {manifest['device']}); "
        f"{c['present']}/{count} present → {scrub_uri(out)}")
    return manifest


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="URI",
                   help="models:/NAME@ALIAS, models:/NAME/VERSION (MLflow registry: mlflow.tracking_uri, else "
                        "MLFLOW_TRACKING_URI, else crfgan train's default <train.storage_path>/mlflow.db) or a "
                        "checkpoint / generator folder")
    p.add_argument("--count", type=int, required=True, metavar="N", help="volumes in the job (at least 1)")
    p.add_argument("--start", type=int, default=0, metavar="K", help="first volume index (default 0)")
    p.add_argument("--seed", type=int, default=None, metavar="S", help="job seed (default synth.seed); volume i has "
                   "seed f(S, i)")
    p.add_argument("--out", required=True, metavar="DIR_OR_S3",
                   help="output folder or s3://bucket/prefix; one job per folder (job.json): a rerun with another model "
                        "version, seed, class, format or render setting is refused")
    p.add_argument("--format", default="nii.gz", choices=("nii.gz", "nii"), help="file format (default nii.gz)")
    p.add_argument("--class", dest="class_name", default=None, metavar="NAME",
                   help="render this class of a conditional model (model.class_names)")
    add_config_arguments(p, default="")
    p.epilog = ("Only synth.* settings of --config / overrides apply (e.g. synth.actors=2 synth.gpus_per_actor=0.5 "
                "synth.gzip_level=1); architecture and data settings come from the model.")


def main(args: argparse.Namespace) -> int:
    from crfgan.config import ConfigError, load_config
    from pipelines.registry import ModelNotFound

    try:
        cfg = load_config(args.config or None, args.overrides)
        m = run(args.model, args.count, args.out, cfg, args.start, args.seed, args.format, args.class_name)
    except (ModelNotFound, ConfigError, ValueError, FileNotFoundError) as e:
        print(f"synthesize: {e}", file=sys.stderr)
        return 2
    return 1 if m["counts"]["failed"] else 0

