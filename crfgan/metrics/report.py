"""The evaluation report: ``metrics.json``, ``index.html``, ``report.md`` and PNG figures in one folder.

Figures: montages (axial, coronal and sagittal mid-slices of the first volumes of each set), intensity histograms
(HU for CT), radially averaged power spectra, and seam profiles (mean |slice step| per depth boundary, seam
boundaries marked), and an offline slice viewer in ``index.html``: per plane (axial, coronal, sagittal) one PNG
strip of slices per set and a slider that moves all of them to the same slice; ``index.html#axial=N&coronal=M``
opens it there. No network, no external script. Every file is written atomically; the HTML references only files
written here. ``crfgan bench viewer`` screenshots it in headless Chromium.
"""

from __future__ import annotations

import html
import io
import json
import math
from pathlib import Path

import numpy as np

from crfgan.storage import atomic_local_path

from .compute import HIST_BINS, IDEAL
from .physics import to_physical

HOW_TO_READ = """\
- **quality_score** (the headline; Tune's objective): fine-scale sliced Wasserstein distance of 3D Laplacian-pyramid
  patches (**swd_fine**) plus penalties beyond a tolerance for an intensity offset (**intensity_term**, from
  **intensity_shift_hu**), for volumes that copy each other (**collapse_term**, from **dup_ratio**) and for seams
  (**seam_term**, from seam_score, 64³ and up). Lower is better; a held-out real set scores its floor (the README's
  degradation table gives the floor and what each failure costs). **memorisation_ratio**: distance of each volume to
  the nearest training volume or its mirror image, over the training set's own; near 0: copies.
- **fd_ssl, kid_ssl, mmd_ssl** (blind to blur, noise and seams: see the README's degradation table): Fréchet
  distance, unbiased KID (± its std over subsets) and Gaussian-kernel MMD
  (median heuristic) on features of this project's self-supervised 3D extractor (trained on the real training
  volumes; its SHA-256 is below). Lower is better; 0 is the real set against itself. They are **not** FID or the
  published Med3D numbers and are comparable only between reports with the same extractor hash. With few volumes the
  Fréchet distance carries a large positive bias; KID is unbiased (it can be slightly negative).
- **spectrum_dist**: mean |Δ log10 P| of the radially averaged 3D power spectra (blur, noise, checkerboard). 0 ideal.
- **hist_w1_hu / hist_w1**: Wasserstein-1 between the voxel intensity distributions (HU for CT). **tissue_l1**: summed
  |Δ fraction| over air, lung, fat, soft tissue and bone. 0 ideal.
- **diversity_ratio** = (1 − MS-SSIM among synthetic pairs) / (1 − MS-SSIM among real pairs): 1 is as diverse as the
  real scans, near 0 is mode collapse (every sample alike).
- **nn_ratio**: mean RMSE of each synthetic volume to its nearest training volume over the same figure for real
  volumes (leave-one-out). Far below 1: memorised training volumes.
- **seam_score / seam_grad_score**: intensity step / gradient kink at the depths where rendered sub-volumes meet, over
  the same statistic at other depths of the same phase of the upsampling grid. 1 = no seam; seam_score_real is the
  real set's figure (its noise level). Needs 64³ or more.
- **Comparison mode**: ×, a set's value over the first synthetic set's, only for metrics whose ideal is 0 and which are
  never negative (below 1: better); Δ, the difference, for every other metric (KID and MMD² can be negative;
  diversity_ratio's ideal is 1).
"""


def _finish(fig, ax, xlabel: str, ylabel: str, title: str, path) -> str:
    """Label a one-axis line plot, save it as ``path`` and close it; returns the file name."""
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    ax.set_title(title)
    save_png(fig, path)
    plt.close(fig)
    return path.name


def save_png(fig_or_img, path: Path) -> None:
    with atomic_local_path(path, suffix=".png") as tmp:
        if hasattr(fig_or_img, "savefig"):
            fig_or_img.savefig(tmp, dpi=90, bbox_inches="tight")
        else:
            fig_or_img.save(tmp, format="PNG")


PLANES = ("axial", "coronal", "sagittal")


def _plane_slice(v: np.ndarray, plane: str, i: int) -> np.ndarray:
    """Slice ``i`` of a (z, y, x) volume in ``plane``; superior up in the coronal and sagittal views (as montage)."""
    if plane == "axial":
        return v[i]
    return (v[:, i] if plane == "coronal" else v[:, :, i])[::-1]


def slice_strip(volumes: np.ndarray, k: int = 4, max_slices: int = 64, plane: str = "axial"):
    """The slice viewer's image for one plane: the first ``k`` volumes side by side, one row per slice (every slice,
    or ``max_slices`` evenly spaced), top to bottom; (PIL image, slice indices, one row's height in pixels)."""
    from PIL import Image

    if plane not in PLANES:
        raise ValueError(f"plane {plane!r}: one of {', '.join(PLANES)}")
    size = volumes.shape[1]
    idx = np.unique(np.linspace(0, size - 1, min(size, max_slices)).round().astype(int))
    rows = [np.concatenate([_plane_slice(v, plane, i) for v in volumes[:k]], axis=1) for i in idx]
    img = np.clip((np.concatenate(rows, axis=0) + 1) * 127.5, 0, 255).astype(np.uint8)
    scale = max(1, 128 // size)
    return (Image.fromarray(img).resize((img.shape[1] * scale, img.shape[0] * scale), Image.NEAREST), idx.tolist(),
            size * scale)


def montage(volumes: np.ndarray, k: int = 4):
    """Rows of axial | coronal | sagittal mid-slices of the first ``k`` volumes (superior up in the side views)."""
    from PIL import Image

    rows = []
    for v in volumes[:k]:
        s = v.shape[0] // 2
        rows.append(np.concatenate([v[s], v[:, s][::-1], v[:, :, s][::-1]], axis=1))
    img = np.clip((np.concatenate(rows, axis=0) + 1) * 127.5, 0, 255).astype(np.uint8)
    scale = max(1, 192 // volumes.shape[1])
    return Image.fromarray(img).resize((img.shape[1] * scale, img.shape[0] * scale), Image.NEAREST)


def _plots(stats: dict, modality: str, window, seams: list[int], out: Path) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = {}
    x = to_physical(np.linspace(-1, 1, HIST_BINS + 1)[:-1] + 1.0 / HIST_BINS, modality, window)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for name, s in stats.items():
        h = s["hist"].reshape(-1, 16).sum(1)  # 128 display bins
        ax.semilogy(x.reshape(-1, 16).mean(1), h / h.sum() + 1e-7, label=name)
    files["histograms"] = _finish(
        fig, ax, "HU" if modality == "ct" else "intensity ([-1, 1])", "fraction of voxels", "Intensity histograms",
        out / "histograms.png")

    fig, ax = plt.subplots(figsize=(7, 3.5))
    for name, s in stats.items():
        p = s["spectrum"]
        ax.semilogy(np.arange(1, len(p)), p[1:], label=name)
    files["power_spectra"] = _finish(
        fig, ax, "radial frequency (cycles per volume)", "power", "Radially averaged 3D power spectra", out / "power_spectra.png")

    if not seams:  # no seam score at this size: no seam plot either
        return files
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for name, s in stats.items():
        step = np.asarray(s["step"], dtype=float)
        ax.plot(np.arange(1, len(step)), step[1:], marker=".", label=name)
    for b in seams:
        ax.axvline(b, color="grey", lw=0.6, ls="--")
    files["seam_profiles"] = _finish(
        fig, ax, "depth boundary (axial slice); dashed: sub-volume borders", "mean |x[b] − x[b−1]|", "Seam profiles",
        out / "seam_profiles.png")
    return files


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, float) and not math.isfinite(v):
        return "nan"
    return f"{v:.4g}"


def _cmp(entry) -> str:
    if not entry:
        return ""
    if "ratio" in entry:
        return "" if entry["ratio"] is None else f"×{_fmt(entry['ratio'])}"
    v = entry["difference"]
    return f"{'+' if v >= 0 else ''}{_fmt(v)}"


def table(metrics: dict[str, dict], ratios: dict[str, dict] | None = None) -> tuple[list[str], list[list[str]]]:
    names = list(metrics)
    keys = [k for k in dict.fromkeys(k for m in metrics.values() for k in m)]
    header = ["metric", "ideal"] + names + ([f"{n} vs {names[0]}" for n in names[1:]] if ratios else [])
    rows = []
    for k in keys:
        row = [k, IDEAL.get(k, "")] + [_fmt(metrics[n].get(k)) for n in names]
        if ratios:
            row += [_cmp(ratios[n].get(k)) for n in names[1:]]
        rows.append(row)
    return header, rows


def write_report(out_dir: str | Path, result: dict, volumes: dict[str, np.ndarray], stats: dict[str, dict],
                 modality: str, window, seams: list[int]) -> list[Path]:
    """Write the report folder; ``result`` is what goes to metrics.json (``metrics``, ``ratios``, ``extractor`` …)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    montages = {}
    for i, (name, vols) in enumerate(volumes.items()):
        fname = f"montage_{i:02d}.png"
        save_png(montage(vols), out / fname)
        montages[name] = fname
    strips, viewer = {p: {} for p in PLANES}, {}
    for i, (name, vols) in enumerate(volumes.items()):
        for plane in PLANES:
            img, idx, row_px = slice_strip(vols, plane=plane)
            fname = f"slices_{i:02d}_{plane}.png"
            save_png(img, out / fname)
            strips[plane][name] = (fname, img.size[0], row_px)
            viewer[plane] = idx
    figs = _plots(stats, modality, window, seams, out)
    with atomic_local_path(out / "metrics.json") as tmp:
        Path(tmp).write_text(json.dumps(result, indent=2, default=float))
    header, rows = table(result["metrics"], result.get("ratios"))
    ext = result.get("extractor") or {}
    prov = (f"Real set: {result['real']['uri']} ({result['real']['n']} volumes, {modality}). "
            f"Extractor SHA-256 {ext.get('sha256', '–')} trained on data {ext.get('data_hash', '–')}.")
    notes = result.get("notes", [])

    md = io.StringIO()
    md.write("# Evaluation report\n\n" + prov + "\n\n")
    md.write("| " + " | ".join(header) + " |\n|" + "---|" * len(header) + "\n")
    for r in rows:
        md.write("| " + " | ".join(r) + " |\n")
    md.write("\n## How to read this\n\n" + HOW_TO_READ + "\n")
    for n in notes:
        md.write(f"- {n}\n")
    md.write("\n## Figures\n\n")
    for name, f in montages.items():
        md.write(f"**{name}** (axial | coronal | sagittal)\n\n![{name}]({f})\n\n")
    for f in figs.values():
        md.write(f"![{f}]({f})\n\n")
    with atomic_local_path(out / "report.md") as tmp:
        Path(tmp).write_text(md.getvalue())

    e = html.escape
    h = io.StringIO()
    h.write("<!doctype html><html><head><meta charset='utf-8'><title>crfgan evaluation</title><style>"
            "body{font-family:sans-serif;margin:20px;max-width:1150px}table{border-collapse:collapse;font-size:13px}"
            "td,th{border:1px solid #bbb;padding:3px 7px;text-align:right}td:first-child,th:first-child{text-align:left}"
            "img{max-width:100%;border:1px solid #ddd}.m{display:inline-block;margin:4px;vertical-align:top;width:370px}"
            "</style></head><body><h1>Evaluation report</h1>")
    h.write(f"<p>{e(prov)}</p><table><tr>" + "".join(f"<th>{e(c)}</th>" for c in header) + "</tr>")
    for r in rows:
        h.write("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>")
    h.write("</table><h2>How to read this</h2><ul>")
    for line in HOW_TO_READ.replace("\n  ", " ").strip().split("\n"):
        h.write(f"<li>{e(line.lstrip('- ').replace('**', ''))}</li>")
    for n in notes:
        h.write(f"<li>{e(n)}</li>")
    h.write("</ul><h2>Montages (axial | coronal | sagittal)</h2>")
    for name, f in montages.items():
        h.write(f"<div class='m'><b>{e(name)}</b><br><img src='{e(f)}' alt='{e(name)}'></div>")
    if viewer:  # offline: per plane one PNG strip per set, a slider moves that plane's strips to the same slice
        h.write("<h2 id='viewer'>Slice viewer (first volumes of each set)</h2><p>Drag a slider; a link ending in "
                "<code>#axial=20&amp;coronal=32</code> opens the viewer at those slices.</p>")
        for plane, idx in viewer.items():
            mid = len(idx) // 2
            h.write(f"<h3>{plane}</h3><p>slice <span id='n-{plane}'>{idx[mid]}</span> <input type='range' "
                    f"id='s-{plane}' min='0' max='{len(idx) - 1}' value='{mid}' style='width:400px' "
                    f"oninput=\"sl('{plane}',this.value)\"></p>")
            for name, (f, w, row_px) in strips[plane].items():
                h.write(f"<div class='m' style='width:auto'><b>{e(name)}</b><div style='overflow:hidden;width:{w}px;"
                        f"height:{row_px}px'><img class='sv sv-{plane}' data-h='{row_px}' src='{e(f)}' "
                        f"alt='{e(name)} {plane} slices' style='max-width:none;border:0;margin-top:-{mid * row_px}px'>"
                        "</div></div>")
        h.write(f"<script>const Z={json.dumps(viewer)};function sl(p,k){{"
                "document.getElementById('n-'+p).textContent=Z[p][k];"
                "document.querySelectorAll('.sv-'+p).forEach(i=>i.style.marginTop=(-k*i.dataset.h)+'px');}"
                # #plane=slice in the URL: each named plane's slider to the nearest slice, the viewer scrolled into view
                # (not with scroll=0: bench viewer's screenshots, where a scrolled headless page paints partly blank)
                "function go(){const q=new URLSearchParams(location.hash.slice(1));let any=false;"
                "for(const p in Z){if(!q.has(p))continue;const n=+q.get(p);let k=0;"
                "Z[p].forEach((v,i)=>{if(Math.abs(v-n)<Math.abs(Z[p][k]-n))k=i;});"
                "document.getElementById('s-'+p).value=k;sl(p,k);any=true;}"
                "if(any&&q.get('scroll')!=='0')document.getElementById('viewer').scrollIntoView();}"
                "window.addEventListener('hashchange',go);window.addEventListener('load',go);</script>")
    h.write("<h2>Statistics</h2>")
    for f in figs.values():
        h.write(f"<div><img src='{e(f)}' alt='{e(f)}'></div>")
    h.write("</body></html>")
    with atomic_local_path(out / "index.html") as tmp:
        Path(tmp).write_text(h.getvalue())
    written = [out / n for n in ("index.html", "report.md", "metrics.json", *montages.values(),
                                 *(f for p in strips.values() for f, _, _ in p.values()), *figs.values())]
    return written
