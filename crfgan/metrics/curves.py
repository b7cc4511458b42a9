"""Training curves as one PNG: sample quality, diversity and the losses against the iteration.

Used by ``crfgan train`` (the MLflow run's ``curves/curves.png``, from the metrics rank 0 logged) and by
``crfgan bench collapse`` (next to its JSON). Each panel draws the keys it finds; a panel with none is left out.
"""

from __future__ import annotations

import math
from pathlib import Path

PANELS = (
    ("sample quality (lower is better)", ("quality_score", "g_quality_score", "fd_ssl_quick", "val_l1"), True),
    ("diversity (1: as diverse as real; 0: collapse)", ("diversity_ratio", "g_diversity_ratio", "dup_ratio"), False),
    ("losses", ("d_loss", "g_loss", "crf_loss", "e_loss", "e_sub_loss", "r1"), False),
)


def series(rows: list[dict], key: str) -> tuple[list[float], list[float]]:
    """(iterations, values) of ``key`` over ``rows`` (dicts with ``iteration``), finite values only."""
    xs, ys = [], []
    for r in rows:
        v = r.get(key)
        if isinstance(v, (int, float)) and math.isfinite(v) and "iteration" in r:
            xs.append(float(r["iteration"]))
            ys.append(float(v))
    return xs, ys


def plot_curves(rows: list[dict], path: Path | str, title: str = "", floor: dict | None = None,
                diversity_bar: float | None = None) -> list[str]:
    """Write the curves of ``rows`` to the PNG ``path`` and return the keys drawn (none drawn: no file, []).

    ``floor``: real-vs-real values drawn as dashed lines of the same key (e.g. ``{"quality_score": 2.4}``);
    ``diversity_bar``: a dotted target line on the diversity panel.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .report import save_png

    floor = floor or {}
    panels = [(t, [k for k in keys if series(rows, k)[0]], log) for t, keys, log in PANELS]
    panels = [p for p in panels if p[1]]
    if not panels:
        return []
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.8), squeeze=False)
    drawn = []
    for ax, (name, keys, log) in zip(axes[0], panels):
        for k in keys:
            xs, ys = series(rows, k)
            line, = ax.plot(xs, ys, marker="o" if len(xs) < 40 else None, ms=3, label=k)
            drawn.append(k)
            if k in floor:
                ax.axhline(floor[k], ls="--", lw=1, color=line.get_color(), label=f"{k} real-vs-real floor")
        if name.startswith("diversity") and diversity_bar is not None:
            ax.axhline(diversity_bar, ls=":", lw=1, color="k", label=f"target {diversity_bar:g}")
        if log and all(v > 0 for k in keys for v in series(rows, k)[1]):
            ax.set_yscale("log")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_png(fig, Path(path))
    plt.close(fig)
    return drawn
