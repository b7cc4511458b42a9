"""crfgan bench viewer: the report's slice viewer driven in a real headless Chromium (skipped without one)."""

import numpy as np
import pytest

from pipelines.bench import viewer

browser = pytest.mark.skipif(viewer.find_chromium() is None, reason="no Chromium here (make test installs Debian's "
                             "chromium where it can: root and apt-get)")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    from crfgan.metrics.compute import HIST_BINS
    from crfgan.metrics.report import write_report

    out = tmp_path_factory.mktemp("report")
    v = np.zeros((2, 32, 32, 32), np.float32)
    for z in range(32):
        v[:, z] = -1 + 2 * z / 31  # brightness encodes the axial slice
    vols = {"real": v, "syn": -v}
    stats = {k: {"hist": np.ones(HIST_BINS), "spectrum": np.ones(16), "n": 2} for k in vols}
    result = {"real": {"uri": "r", "n": 2}, "metrics": {"syn": {"quality_score": 1.0}}, "ratios": None, "notes": []}
    write_report(out, result, vols, stats, "ct", (-1024, 600), [])
    return out / "index.html"


@browser
def test_the_page_script_moves_each_plane_to_the_linked_slice(report):
    assert viewer.slider_state(report) == {"axial": 16, "coronal": 16, "sagittal": 16}  # the middle, by default
    assert viewer.slider_state(report, "axial=3&sagittal=30") == {"axial": 3, "coronal": 16, "sagittal": 30}


@browser
def test_screenshots_show_the_slice_the_slider_is_on(report, tmp_path):
    from PIL import Image

    a = viewer.screenshot(report, tmp_path / "a.png", "axial=0", size=(900, 2400))
    b = viewer.screenshot(report, tmp_path / "b.png", "axial=31", size=(900, 2400))
    ia, ib = (np.asarray(Image.open(p).convert("L"), dtype=np.int16) for p in (a, b))
    assert ia.shape == ib.shape == (2400, 900)
    assert (ia[:80] < 100).sum() > 500 and (ib[:80] < 100).sum() > 500  # the page's title painted: not scrolled
    diff = np.abs(ia - ib) > 100  # slice 0 is black and slice 31 white in "real" (and the reverse in "syn")
    assert diff.sum() > 2 * 128 * 128  # at least the two 128-pixel views of volume pair 1 changed
    rows = np.nonzero(diff.any(axis=1))[0]
    assert rows.max() - rows.min() < 200  # and only the axial strips' row of the page


def test_the_cli_refuses_a_folder_without_a_report_and_a_bad_slice(tmp_path, capsys):
    from pipelines.cli import main

    assert main(["bench", "viewer", str(tmp_path)]) == 2
    assert "no report page there" in capsys.readouterr().err
    (tmp_path / "index.html").write_text("<html></html>")
    assert main(["bench", "viewer", str(tmp_path), "--slice", "oblique=3"]) == 2
    assert "want PLANE=N" in capsys.readouterr().err
