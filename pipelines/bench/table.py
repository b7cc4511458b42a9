"""Print benchmark rows as an aligned table and optionally write them as JSON."""

from __future__ import annotations

import json
import os
import platform

from crfgan.storage import write_text_atomic


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo's ``model name``), else what ``platform`` knows, else ``unknown``."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, val = line.partition(":")
                if key.strip() == "model name" and val.strip():
                    return val.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine() -> dict:
    import torch

    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return {"device": dev, "cpu_model": cpu_model(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__}


def format_table(title: str, rows: list[dict]) -> str:
    if not rows:
        return f"## {title}\n(no rows)\n"
    cols = list(dict.fromkeys(k for r in rows for k in r))

    def fmt(v) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return "" if v is None else str(v)

    cells = [[fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    line = lambda vals: "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths)) + " |"  # noqa: E731
    out = [f"## {title}", line(cols), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(row) for row in cells]
    return "\n".join(out) + "\n"


def emit(title: str, rows: list[dict], json_path: str | None = None, extra: dict | None = None) -> None:
    """Print the table; with ``json_path`` also write ``{"title", "machine", "rows", ...}``."""
    print(format_table(title, rows), flush=True)
    if json_path:
        doc = {"title": title, "machine": machine(), "rows": rows, **(extra or {})}
        write_text_atomic(json_path, json.dumps(doc, indent=2))
