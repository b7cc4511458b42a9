"""``crfgan bench collapse-table``: the seed table of several ``crfgan bench collapse`` runs, with verdicts.

    crfgan bench collapse-table RUN.json [RUN.json …] [--baseline VARIANT] [--json PATH]

Each RUN.json is the ``--json`` of one ``crfgan bench collapse`` run. Runs are grouped into variants by their
``name`` with a trailing ``-sSEED`` removed (a run without a name: ``hagan`` or ``crfgan`` from its
``model.arch`` override, plus ``-ema`` and the decay when ``train.ema_decay`` differs from 0.999). For every
variant the table gives mean ± half-range over its runs of the figures at each run's final evaluation (with
``--at-iteration N``: its last evaluation at or before iteration N, so runs cut by a CPU budget at different
iterations compare like for like; ``--at-iteration VARIANT=N``: for that variant only, e.g. to put variants side by
side at iterations of equal CPU cost):

- ``iterations`` and ``cpu_s_per_iteration`` (the process's CPU seconds, evaluations included, over the iterations);
- ``peak_rss_mb``: the process's peak resident memory (nan for runs that did not record it);
- G's ``g_diversity_ratio`` and ``g_quality_vs_floor``, and the same for the generator the bench scores first
  (the EMA copy when ``train.ema_decay`` > 0): ``diversity_ratio`` and ``quality_vs_floor``;
- ``g_out_of_collapse`` and ``out_of_collapse``: how many runs meet issue 16's bar (diversity ≥ 0.7 and ≤ 3× the
  real-vs-real floor).

Every variant but the baseline (``--baseline``; default the variant whose runs are all HA-GAN's) gets a verdict per
figure, as ``crfgan compare`` gives it (``pipelines.compare.verdict``): "better"/"worse" only where the ranges over
seeds of the distance to the figure's ideal do not overlap, else "within spread"; "—" with fewer than two runs on a
side. ``--json PATH`` writes
the table as JSON and, beside it (same name, ``.png``), G's diversity and quality against the CPU seconds of every
run. A file that is not a collapse-bench JSON is refused, by name, before anything is computed.

Runs from more than one machine (the ``machine`` each run recorded: CPU model, cores, torch; "unrecorded" for runs
before 2026-12-07) are named under the table: their CPU seconds per iteration then compare machines as well as
variants, and the same seed on two machines is two samples of the seed spread, not one run twice.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np

from pipelines.bench.collapse import DIVERSITY_BAR, QUALITY_BAR, _clean

# figure → the metric whose direction (distance to the ideal) ``pipelines.compare.verdict`` uses for it
FIGURES = {
    "iterations": None,
    "cpu_s_per_iteration": "s_per_iteration",
    "g_diversity_ratio": "diversity_ratio",
    "g_quality_vs_floor": "quality_vs_floor",
    "diversity_ratio": "diversity_ratio",
    "quality_vs_floor": "quality_vs_floor",
    "peak_rss_mb": "peak_memory_mb",
}
NEEDED = ("iteration", "cpu_s", "diversity_ratio", "quality_vs_floor")


def add_arguments(p) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN.json", help="the --json files of crfgan bench collapse runs")
    p.add_argument("--baseline", default="", help="the variant the others are judged against (default: the one "
                                                  "whose runs are HA-GAN's, model.arch=hagan; else the first)")
    p.add_argument("--at-iteration", type=_at_iteration, action="append", default=[], metavar="[VARIANT=]N",
                   help="take the figures at each run's last evaluation at or before iteration N instead of its final "
                        "one: for every variant, or with VARIANT= for that one (repeatable), e.g. to compare variants at "
                        "iterations of equal CPU cost; default: the final evaluation")
    p.add_argument("--json", metavar="PATH", help="write the table as JSON and G's curves as PATH with .png")


def _at_iteration(text: str) -> tuple[str, int]:
    import argparse

    name, _, n = text.rpartition("=")
    if not n.isdigit() or int(n) < 1:
        raise argparse.ArgumentTypeError(f"want N or VARIANT=N with N a whole number >= 1, got {text!r}")
    return name, int(n)


def _override(run: dict, key: str) -> str | None:
    val = None
    for o in run.get("overrides", []):
        k, _, v = str(o).partition("=")
        if k == key:
            val = v  # the last one wins, as in the config
    return val


def variant(run: dict) -> str:
    name = str(run.get("name") or "")
    if name:
        return re.sub(r"-s\d+$", "", name)
    label = "hagan" if _override(run, "model.arch") == "hagan" else "crfgan"
    ema = _override(run, "train.ema_decay")
    if ema is not None and float(ema) not in (0.0, 0.999):
        label += f"-ema{ema}"
    return label


def load(paths: list[str]) -> list[dict]:
    """The runs, or ValueError naming every file that is not a collapse-bench JSON and why."""
    runs, bad = [], []
    for p in paths:
        try:
            d = json.loads(Path(p).read_text())
        except FileNotFoundError:
            bad.append(f"{p}: no such file")
            continue
        except (OSError, ValueError) as e:
            bad.append(f"{p}: not JSON ({e.__class__.__name__})")
            continue
        curve = d.get("curve") if isinstance(d, dict) else None
        if not curve or not isinstance(curve, list) or not isinstance(curve[-1], dict):
            bad.append(f"{p}: no evaluation curve (not a crfgan bench collapse --json file, or no evaluation yet)")
            continue
        missing = [k for k in NEEDED if k not in curve[-1]]
        if missing:
            bad.append(f"{p}: the final evaluation lacks {', '.join(missing)}")
            continue
        d["_path"] = str(p)
        runs.append(d)
    if bad:
        raise ValueError("not collapse-bench runs:\n  " + "\n  ".join(bad))
    return runs


def evaluation_row(run: dict, at_iteration: int = 0) -> dict:
    """The run's final evaluation, or with ``at_iteration`` > 0 its last one at or before that iteration."""
    if at_iteration <= 0:
        return run["curve"][-1]
    rows = [r for r in run["curve"] if r["iteration"] <= at_iteration]
    return rows[-1] if rows else run["curve"][0]


def final_figures(run: dict, at_iteration: int = 0) -> dict:
    last = evaluation_row(run, at_iteration)
    g_div = last.get("g_diversity_ratio", last["diversity_ratio"])  # no EMA copy: the bench scores G only
    g_q = last.get("g_quality_vs_floor", last["quality_vs_floor"])
    return {
        "iterations": float(last["iteration"]),
        "cpu_s_per_iteration": float(last["cpu_s"]) / max(float(last["iteration"]), 1.0),
        "g_diversity_ratio": float(g_div), "g_quality_vs_floor": float(g_q),
        "diversity_ratio": float(last["diversity_ratio"]), "quality_vs_floor": float(last["quality_vs_floor"]),
        "g_out_of_collapse": bool(g_div >= DIVERSITY_BAR and g_q <= QUALITY_BAR),
        "out_of_collapse": bool(last["diversity_ratio"] >= DIVERSITY_BAR and last["quality_vs_floor"] <= QUALITY_BAR),
        "peak_rss_mb": float(last.get("peak_rss_mb", "nan")),  # runs before 2026-12-06 did not record it
    }


def machine_label(run: dict) -> str:
    m = run.get("machine")
    if not isinstance(m, dict):
        return "unrecorded"
    return f"{m.get('cpu_model', '?')}, {m.get('cpus', '?')} cores, torch {m.get('torch', '?')}"


def table(runs: list[dict], baseline: str = "", at_iteration: list[tuple[str, int]] | None = None) -> dict:
    """``at_iteration``: (variant, N) pairs, variant "" for all (a named one wins); none: the final evaluations."""
    from pipelines.compare import verdict

    groups: dict[str, list[dict]] = {}
    for r in runs:
        groups.setdefault(variant(r), []).append(r)
    names = list(groups)
    if baseline and baseline not in groups:
        raise ValueError(f"--baseline {baseline}: no such variant (the variants: {', '.join(names)})")
    hagan = [v for v in names if all(_override(r, "model.arch") == "hagan" for r in groups[v])]
    base = baseline or (hagan[0] if hagan else names[0])
    at = dict(at_iteration or [])
    unknown = [v for v in at if v and v not in groups]
    if unknown:
        raise ValueError(f"--at-iteration {unknown[0]}=…: no such variant (the variants: {', '.join(names)})")
    at = {v: at.get(v, at.get("", 0)) for v in names}
    per = {v: [final_figures(r, at[v]) for r in rs] for v, rs in groups.items()}
    floors = sorted({round(float(r["floor"]["quality_score"]), 6) for r in runs if "floor" in r})
    machines = list(dict.fromkeys(machine_label(r) for r in runs))
    out: dict = {"baseline": base, "at_iteration": {v: n or None for v, n in at.items()}, "floor_quality_score": floors,
                 "machines": machines, "variants": {}}
    for v in names:
        fig = {}
        for k, metric in FIGURES.items():
            xs = np.array([f[k] for f in per[v]], dtype=float)
            ok = xs[np.isfinite(xs)]
            entry = {"mean": float(ok.mean()) if ok.size else float("nan"),
                     "half_range": float((ok.max() - ok.min()) / 2) if ok.size else float("nan"), "values": xs.tolist()}
            if v != base:
                entry["vs_" + base] = (verdict(metric, xs, [f[k] for f in per[base]]) if metric else "—")
            fig[k] = entry
        for k in ("g_out_of_collapse", "out_of_collapse"):
            fig[k] = {"count": sum(f[k] for f in per[v]), "of": len(per[v])}
        fig["runs"] = [r["_path"] for r in groups[v]]
        fig["machines"] = [machines.index(machine_label(r)) for r in groups[v]]  # per run: index into "machines"
        out["variants"][v] = fig
    return out


def format_table(t: dict) -> str:
    names = list(t["variants"])
    base = t["baseline"]
    others = [v for v in names if v != base]
    header = ["figure", *[f"{v} (n={t['variants'][v]['out_of_collapse']['of']})" for v in names],
              *[f"{v} vs {base}" for v in others]]
    rows = []
    for k in FIGURES:
        cells = [k]
        for v in names:
            e = t["variants"][v][k]
            cells.append(f"{e['mean']:.4g} ± {e['half_range']:.2g}")
        cells += [t["variants"][v][k].get("vs_" + base, "—") for v in others]
        rows.append(cells)
    for k in ("g_out_of_collapse", "out_of_collapse"):
        rows.append([k, *[f"{t['variants'][v][k]['count']} of {t['variants'][v][k]['of']}" for v in names],
                     *["" for _ in others]])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths))  # noqa: E731
    floors = ", ".join(f"{f:.3g}" for f in t["floor_quality_score"])
    at = t.get("at_iteration") or {}
    at = ("last evaluation at or before iteration " + ", ".join(f"{n} ({v})" if n else f"final ({v})"
                                                               for v, n in at.items())
          if any(at.values()) else "final evaluation")
    notes = [f"(mean ± half-range over runs at each run's {at}; real-vs-real floor {floors}; "
             f"out of collapse: diversity ≥ {DIVERSITY_BAR:g} and quality_vs_floor ≤ {QUALITY_BAR:g})"]
    machines = t.get("machines") or []
    if len(machines) > 1:
        notes.append(f"runs from {len(machines)} machines, so cpu_s_per_iteration compares machines as well as variants "
                     "and a seed on two machines is two samples, not one run twice:")
        for i, m in enumerate(machines):
            used = ", ".join(f"{v} ×{t['variants'][v]['machines'].count(i)}" for v in names
                             if i in t["variants"][v]["machines"])
            notes.append(f"  [{i}] {m}: {used}")
    elif machines == ["unrecorded"]:
        notes.append("(the runs did not record their machine: cpu_s_per_iteration may compare machines)")
    return "\n".join([line(header), *map(line, rows), *notes])


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from crfgan.metrics.report import save_png

    names = list(dict.fromkeys(variant(r) for r in runs))
    colours = {v: f"C{i}" for i, v in enumerate(names)}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for r in runs:
        v = variant(r)
        c = [row for row in r["curve"] if "cpu_s" in row]
        xs = [row["cpu_s"] for row in c]
        kw = dict(color=colours[v], lw=1.2, marker="o", ms=2.5,
                  label=v if r is next(x for x in runs if variant(x) == v) else None)
        axes[0].plot(xs, [row.get("g_diversity_ratio", row["diversity_ratio"]) for row in c], **kw)
        axes[1].plot(xs, [row.get("g_quality_vs_floor", row["quality_vs_floor"]) for row in c], **kw)
    axes[0].axhline(DIVERSITY_BAR, ls=":", color="k", lw=1, label=f"bar {DIVERSITY_BAR:g}")
    axes[1].axhline(QUALITY_BAR, ls=":", color="k", lw=1, label=f"bar {QUALITY_BAR:g}× floor")
    axes[1].axhline(1.0, ls="--", color="grey", lw=1, label="real-vs-real floor")
    axes[1].set_yscale("log")
    for ax, title in zip(axes, ("G's diversity_ratio (1: as diverse as real)", "G's quality_vs_floor (lower is better)")):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("CPU seconds of the run (evaluations included)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_png(fig, path)
    plt.close(fig)


def run(args) -> int:
    from crfgan.storage import write_text_atomic

    try:
        runs = load(args.runs)
        t = table(runs, args.baseline, args.at_iteration)
    except ValueError as e:
        print(f"crfgan: {e}", file=sys.stderr)
        return 2
    print(format_table(t))
    if args.json:
        write_text_atomic(Path(args.json), json.dumps(_clean(t), indent=1))  # nan → null: strict JSON
        plot(runs, Path(args.json).with_suffix(".png"))
    return 0
