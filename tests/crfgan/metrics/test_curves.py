"""Training curves PNG (crfgan/metrics/curves.py)."""

import math

from PIL import Image

from crfgan.metrics.curves import plot_curves, series


def test_series_keeps_finite_values_with_an_iteration():
    rows = [{"iteration": 0, "d_loss": 1.0}, {"iteration": 20, "d_loss": math.nan}, {"d_loss": 3.0},
            {"iteration": 40, "d_loss": 0.5, "quality_score": 7}]
    assert series(rows, "d_loss") == ([0.0, 40.0], [1.0, 0.5])
    assert series(rows, "quality_score") == ([40.0], [7.0])
    assert series(rows, "missing") == ([], [])


def test_plot_draws_the_panels_it_has_keys_for(tmp_path):
    rows = [{"iteration": i, "quality_score": 10 / (i + 1), "diversity_ratio": 0.3, "d_loss": 1.2, "g_loss": 0.8}
            for i in range(0, 100, 20)]
    three = tmp_path / "three.png"
    drawn = plot_curves(rows, three, title="t", floor={"quality_score": 2.0}, diversity_bar=0.7)
    assert drawn == ["quality_score", "diversity_ratio", "d_loss", "g_loss"]
    one = tmp_path / "one.png"
    assert plot_curves([{"iteration": i, "d_loss": 1.0} for i in range(3)], one) == ["d_loss"]
    w3, h3 = Image.open(three).size
    w1, _ = Image.open(one).size
    assert w3 > 2 * w1 and w3 > 2 * h3
    assert plot_curves([{"iteration": 1, "other": 2.0}], tmp_path / "none.png") == []
    assert not (tmp_path / "none.png").exists()
    assert not list(tmp_path.glob("*.tmp*"))  # written atomically
