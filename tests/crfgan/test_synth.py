"""crfgan.synth: seeds, metadata, the int16 encoding and the NIfTI bytes a synthesis job writes."""

from __future__ import annotations

import gzip
import json

import nibabel as nib
import numpy as np
import pytest
import torch

from crfgan.checkpoint import generator_files, load_generator, load_generator_files, save_generator
from crfgan.config import load_config
from crfgan.generator import Generator
from crfgan.synth import (Synthesizer, check_metadata, class_index_for, encode_nifti, generator_metadata, latents,
                          physical, render_volumes, sidecar, to_stored, volume_seed)


def _img(data: bytes):
    raw = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
    return nib.Nifti1Image.from_bytes(raw)


@pytest.fixture(scope="module")
def tiny():
    cfg = load_config("tiny", ["data.modality=ct"])
    torch.manual_seed(0)
    return cfg, Generator(cfg.model).eval()


def test_volume_seed_depends_only_on_job_seed_and_index():
    assert volume_seed(0, 5) == volume_seed(0, 5)
    seeds = {volume_seed(s, i) for s in range(3) for i in range(100)}
    assert len(seeds) == 300 and all(0 <= s < 2**63 for s in seeds)
    torch.testing.assert_close(latents([7, 7], 16)[0], latents([7], 16)[0], rtol=0, atol=0)


def test_metadata_modality_and_intensity():
    cfg = load_config("tiny")  # data.modality=auto
    ct = generator_metadata(cfg, [2, 1, 1], ["ct"], "h")
    assert ct["modality"] == "ct" and ct["intensity"]["unit"] == "HU" and ct["intensity"]["range"] == [-1024.0, 600.0]
    assert generator_metadata(cfg, [2, 1, 1], ["mri"])["intensity"]["range"] == [0.0, 1.0]
    mixed = generator_metadata(cfg, [2, 1, 1], ["ct", "mri"])
    assert mixed["modality"] == "mixed" and mixed["intensity"]["range"] == [-1.0, 1.0]
    assumed = generator_metadata(cfg)
    assert assumed["spacing_zyx_mm"] == [1.0] * 3 and assumed["spacing_source"].startswith("assumed")
    assert ct["class_names"] == [] and ct["orientation"] == "RAS" and ct["data_manifest_hash"] == "h"
    with pytest.raises(ValueError, match="bad spacing"):
        check_metadata({**ct, "spacing_zyx_mm": [1, 0, 1]}, "models:/m@a")


def test_class_names_contract():
    assert class_index_for(None, []) is None
    assert class_index_for("lung", ["brain", "lung"]) == 1
    with pytest.raises(ValueError, match="valid classes: brain, lung"):
        class_index_for("liver", ["brain", "lung"])
    with pytest.raises(ValueError, match="unconditional"):
        class_index_for("lung", [])


def test_ct_file_holds_hounsfield_units_with_the_true_affine(tiny):
    cfg, _ = tiny
    meta = generator_metadata(cfg, [2.0, 1.5, 1.25], ["ct"])
    v = np.linspace(-1, 1, 8 * 6 * 4, dtype=np.float32).reshape(8, 6, 4)  # (z, y, x)
    q, si = to_stored(v, meta)
    img = _img(encode_nifti(q, meta["spacing_zyx_mm"], si, "nii.gz", "zlib", 6))
    arr = np.asarray(img.dataobj)
    assert img.get_data_dtype() == np.int16 and arr.shape == (4, 6, 8)  # (x, y, z)
    np.testing.assert_array_equal(arr, q.transpose(2, 1, 0))
    assert arr.min() == -1024 and arr.max() == 600
    assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
    np.testing.assert_allclose(img.header.get_zooms(), [1.25, 1.5, 2.0])
    assert img.header["qform_code"] == 1 and img.header["sform_code"] == 1


def test_mri_file_scales_to_its_range_and_gzip_impls_agree():
    meta = generator_metadata(load_config("tiny"), [1, 1, 1], ["mri"])
    v = np.linspace(-1, 1, 4 * 4 * 4, dtype=np.float32).reshape(4, 4, 4)
    q, si = to_stored(v, meta)
    files = {impl: encode_nifti(q, [1, 1, 1], si, "nii.gz", impl, 1) for impl in ("zlib", "isal")}
    raw = encode_nifti(q, [1, 1, 1], si, "nii")
    assert gzip.decompress(files["zlib"]) == gzip.decompress(files["isal"]) == raw
    got = _img(files["isal"]).get_fdata()
    assert abs(got.min() - 0.0) < 1e-6 and abs(got.max() - 1.0) < 1e-6
    np.testing.assert_allclose(got.transpose(2, 1, 0), (v + 1) / 2, atol=1 / 32767)
    np.testing.assert_allclose(physical(q, si), (v + 1) / 2, atol=1 / 32767)


def test_generator_export_carries_metadata_without_pickle(tmp_path, tiny):
    cfg, g = tiny
    meta = generator_metadata(cfg, [2, 1, 1], ["ct"], "abc")
    save_generator(tmp_path / "gen", cfg, g, {}, meta)
    assert json.loads((tmp_path / "gen" / "metadata.json").read_text()) == meta
    g2 = load_generator(tmp_path / "gen")
    assert g2.metadata == meta
    g3 = load_generator_files(generator_files(tmp_path / "gen"))
    z = latents([1], cfg.model.latent_dim)
    torch.testing.assert_close(g2.render(z), g3.render(z), rtol=0, atol=0)


def test_synthesizer_matches_the_pyfunc_render(tiny):
    """The job's one-volume path and the batch path (pyfunc, montages) give the same voxels."""
    cfg, g = tiny
    meta = generator_metadata(cfg, [2, 1, 1], ["ct"])
    syn = Synthesizer(g, cfg, meta)
    q, si = syn.stored(123)
    q_batch, _ = to_stored(render_volumes(g, cfg, [5, 123])[1], meta)
    assert np.abs(q.astype(int) - q_batch.astype(int)).max() <= 1  # batch 1 vs 2: float rounding only
    r = syn.render_file(123, fmt="nii.gz", gzip="isal", level=2)
    np.testing.assert_array_equal(np.asarray(_img(r.data).dataobj).transpose(2, 1, 0), q)
    assert r.data == syn.render_file(123, fmt="nii.gz", gzip="isal", level=2).data  # byte-identical reruns
    assert r.render_s > 0 and r.encode_s > 0
    side = json.loads(sidecar(meta, {"name": "m", "version": "1"}, 3, 0, volume_seed(0, 3), None, cfg))
    assert side["index"] == 3 and side["seed"] == volume_seed(0, 3) and side["config_hash"] == cfg.hash()
