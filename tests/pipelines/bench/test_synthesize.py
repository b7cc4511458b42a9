"""``crfgan bench synthesize`` at a tiny size: both tables, with the split and the ratios filled in."""

import json

from pipelines.cli import main


def test_bench_reports_gzip_and_job_rows(ray_local, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "synthesize", "--size", "32", "--actors", "1,2", "--volumes", "2", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    jobs = doc["rows"]
    assert [(r["size"], r["actors"], r["volumes"]) for r in jobs] == [(32, 1, 2), (32, 2, 2)]
    for r in jobs:
        assert r["vol_per_min"] > 0 and abs(r["render_pct"] + r["write_pct"] - 100) < 1e-6 and r["peak_rss_mb"] > 0
    assert jobs[0]["x_vs_1_actor"] == 1 and jobs[1]["x_vs_1_actor"] > 0
    gz = {(r["gzip"], r["level"]): r for r in doc["gzip"]}
    assert gz[("zlib", 6)]["x_vs_zlib6"] == 1 and gz[("isal", 2)]["ratio"] > 1
    printed = capsys.readouterr().out
    assert "## gzip" in printed and "## crfgan synthesize" in printed
