"""crfgan.metrics.report: the offline slice viewer's strips and page."""

import re

import numpy as np

from crfgan.metrics.report import slice_strip


def test_slice_strip_rows_are_the_axial_slices_in_order():
    v = np.zeros((2, 32, 32, 32), np.float32)
    for z in range(32):
        v[0, z] = -1 + 2 * z / 31  # brightness encodes the slice index
    v[1] = -v[0]
    img, idx, row_px = slice_strip(v)
    a = np.asarray(img)
    assert idx == list(range(32)) and row_px == 128 and a.shape == (32 * 128, 2 * 128)
    rows = a[::row_px, 0].astype(int)  # the first pixel of each row, volume 0
    assert np.all(np.diff(rows) > 0) and rows[0] == 0 and rows[-1] == 255
    assert np.all(np.abs(a[::row_px, 128].astype(int) - (255 - rows)) <= 1)  # volume 1 sits beside it
    big = np.zeros((1, 128, 128, 128), np.float32)
    _, idx, row_px = slice_strip(big)
    assert len(idx) == 64 and idx[0] == 0 and idx[-1] == 127 and row_px == 128


def test_report_page_has_a_slider_over_every_set(tmp_path):
    from crfgan.metrics.report import write_report

    rng = np.random.default_rng(0)
    vols = {"real": rng.uniform(-1, 1, (2, 32, 32, 32)).astype(np.float32),
            "syn": rng.uniform(-1, 1, (2, 32, 32, 32)).astype(np.float32)}
    from crfgan.metrics.compute import HIST_BINS

    stats = {k: {"hist": np.ones(HIST_BINS), "spectrum": np.ones(16), "n": 2} for k in vols}
    result = {"real": {"uri": "r", "n": 2}, "metrics": {"syn": {"quality_score": 1.0}}, "ratios": None, "notes": []}
    write_report(tmp_path, result, vols, stats, "ct", (-1024, 600), [])
    page = (tmp_path / "index.html").read_text()
    assert page.count("type='range'") == 3  # axial, coronal, sagittal
    for plane in ("axial", "coronal", "sagittal"):
        assert page.count(f"class='sv sv-{plane}'") == 2
    files = re.findall(r"src='(slices_\d+_\w+\.png)'", page)
    assert len(files) == 6 and all((tmp_path / f).is_file() for f in files)
    assert "http" not in page.split("<script>")[-1]  # the viewer loads nothing


def test_slice_strip_planes_are_the_coronal_and_sagittal_slices():
    v = np.zeros((1, 16, 16, 16), np.float32)
    for i in range(16):
        v[0, :, i, :] += 2 * i / 15 - 1  # brightness encodes y: constant over every coronal slice
    img, idx, row_px = slice_strip(v, plane="coronal")
    a = np.asarray(img)
    firsts = a[::row_px, 0].astype(int)
    assert np.all(np.diff(firsts) > 0)  # row k is coronal slice k
    assert np.ptp(a[:row_px]) == 0  # one coronal slice is uniform here
    img, _, _ = slice_strip(v, plane="sagittal")
    assert np.ptp(np.asarray(img)[0]) > 0  # a sagittal slice crosses y (across the row)
    import pytest

    with pytest.raises(ValueError, match="plane"):
        slice_strip(v, plane="oblique")
