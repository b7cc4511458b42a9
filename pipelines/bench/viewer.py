"""``crfgan bench viewer``: open an evaluation report's offline slice viewer in headless Chromium and save a
screenshot — what a person sees, from ``file://`` with networking off.

    crfgan bench viewer outputs/eval --out viewer.png --slice axial=20 --slice coronal=32

``--slice PLANE=N`` moves that plane's slider to slice N through the page's own ``#axial=N&…`` link (the viewer's
script, not this tool, moves it). The tool then reads the slice labels back from the page Chromium rendered and
prints them, so a broken viewer script shows as a mismatch, not as a plausible picture. The screenshot is of the
page's top, unscrolled (``scroll=0`` in the link: a headless screenshot of a scrolled page comes out partly blank),
so the default window is tall enough for the report's viewer. Needs a Chromium binary
(Debian: ``apt-get install chromium``; or ``--chromium PATH`` / ``$CRFGAN_CHROMIUM``); without one the run fails
with one line.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PLANES = ("axial", "coronal", "sagittal")
# no network, no first-run, sync or component traffic: this machine's closed network refuses it, and a report needs none
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
         "--virtual-time-budget=3000",
         # the capture waits for every paint of the frame: under load a screenshot otherwise missed strips
         "--run-all-compositor-stages-before-draw")


def add_arguments(p) -> None:
    p.add_argument("report", help="a report folder (crfgan evaluate --report) or its index.html")
    p.add_argument("--out", default="viewer.png", help="the screenshot PNG (default viewer.png)")
    p.add_argument("--slice", action="append", default=[], metavar="PLANE=N",
                   help=f"a slider position ({', '.join(PLANES)}), repeatable")
    p.add_argument("--size", default="1200x3600", help="window WIDTHxHEIGHT in pixels (default 1200x3600); the screenshot is the "
                        "page's top, unscrolled, this tall")
    p.add_argument("--chromium", default=os.environ.get("CRFGAN_CHROMIUM", ""),
                   help="the Chromium binary (default: $CRFGAN_CHROMIUM, else chromium on PATH)")


def find_chromium(given: str = "") -> str | None:
    for c in ([given] if given else []) + ["chromium", "chromium-browser", "google-chrome"]:
        path = shutil.which(c) if c else None
        if path:
            return path
    return None


def parse_slices(slices: list[str]) -> dict[str, int]:
    """``["axial=20", …]`` → ``{"axial": 20, …}``; a ValueError naming the bad one."""
    out = {}
    for s in slices:
        plane, _, n = s.partition("=")
        if plane not in PLANES or not n.strip().lstrip("-").isdigit():
            raise ValueError(f"--slice {s!r}: want PLANE=N with PLANE one of {', '.join(PLANES)}")
        out[plane] = int(n)
    return out


def _url(page: Path, frag: str) -> str:
    return page.resolve().as_uri() + (f"#{frag}" if frag else "")


def _chromium(chromium: str, profile: str, args: list[str], url: str, timeout_s: float) -> subprocess.CompletedProcess:
    exe = find_chromium(chromium)
    if exe is None:
        raise FileNotFoundError("no Chromium found (install Debian's chromium, or give --chromium PATH)")
    return subprocess.run([exe, *FLAGS, f"--user-data-dir={profile}/u", *args, url], capture_output=True, text=True,
                          timeout=timeout_s)


def slider_state(page: Path, frag: str = "", chromium: str = "", timeout_s=60.0) -> dict[str, int]:
    """The slice number each plane's label shows after Chromium ran the page's script at ``#frag``."""
    with tempfile.TemporaryDirectory() as profile:
        r = _chromium(chromium, profile, ["--dump-dom"], _url(page, frag), timeout_s)
    if r.returncode != 0:
        raise RuntimeError(f"chromium exited {r.returncode}: {r.stderr.strip()[-300:]}")
    return {p: int(n) for p, n in re.findall(r"""id=["']n-(\w+)["']>(-?\d+)<""", r.stdout)}


def screenshot(page: Path, out: Path, frag: str = "", size=(1280, 1000), chromium: str = "", timeout_s=60.0) -> Path:
    """Chromium's screenshot of ``page`` (a local HTML file) at ``#frag``, unscrolled, written atomically to ``out``."""
    from crfgan.storage import atomic_local_path

    with tempfile.TemporaryDirectory() as profile, atomic_local_path(out, suffix=".png") as tmp:
        os.remove(tmp)  # so that an existing file below means Chromium wrote it
        r = _chromium(chromium, profile, [f"--window-size={size[0]},{size[1]}", f"--screenshot={tmp}"],
                      _url(page, "&".join(x for x in (frag, "scroll=0") if x)), timeout_s)
        if r.returncode != 0 or not os.path.isfile(tmp):
            raise RuntimeError(f"chromium exited {r.returncode} without a screenshot: {r.stderr.strip()[-300:]}")
    return out


def run(args) -> int:
    page = Path(args.report)
    page = page / "index.html" if page.is_dir() else page
    if not page.is_file():
        print(f"bench viewer: {page}: no report page there (run crfgan evaluate --report DIR first)", file=sys.stderr)
        return 2
    try:
        w, h = (int(x) for x in args.size.lower().split("x"))
        asked = parse_slices(args.slice)
        frag = "&".join(f"{p}={n}" for p, n in asked.items())
        out = screenshot(page, Path(args.out), frag, (w, h), args.chromium)
        shown = slider_state(page, frag, args.chromium)
    except (ValueError, FileNotFoundError, RuntimeError, subprocess.TimeoutExpired) as e:
        print(f"bench viewer: {e}", file=sys.stderr)
        return 2
    print(f"[bench viewer] {page} → {out}; slices shown: "
          + (", ".join(f"{p} {n}" for p, n in shown.items()) or "none (no slice viewer on this page)"))
    wrong = {p: (n, shown.get(p)) for p, n in asked.items() if shown.get(p) != n}
    if wrong:  # the nearest slice the viewer has can differ from N when it shows every k-th slice
        print("bench viewer: the page shows other slices than asked (asked, shown): "
              + ", ".join(f"{p} {a}→{b}" for p, (a, b) in wrong.items()), file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps({"page": str(page), "screenshot": str(out), "asked": asked,
                                               "shown": shown}, indent=1))
    return 0
