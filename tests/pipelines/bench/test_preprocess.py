"""``crfgan bench preprocess`` runs both contenders on a generated collection and reports comparable rows."""

import json

from pipelines.bench import preprocess as bench_preprocess
from pipelines.cli import build_parser


def test_bench_reports_ray_and_loop_rows_over_the_same_volumes(ray_local, tmp_path, capsys):
    out = tmp_path / "pre.json"
    # parsed by the real CLI, so the defaults are the ones a user gets (the collection comes from the shipped scans)
    args = build_parser().parse_args(["bench", "preprocess", "--volumes", "10", "--config", "tiny", "--sizes", "32,48",
                                      "--repeats", "1", "--json", str(out), "--workdir", str(tmp_path / "work")])
    bench_preprocess.run(args)
    small, big, loop = json.loads(out.read_text())["rows"]
    assert (small["volumes"], big["volumes"], loop["volumes"]) == (1, 10, 10)  # each run checks all were prepared
    assert big["input_MB"] == loop["input_MB"] > small["input_MB"]
    assert big["speedup_vs_loop"] > 0 and (big["speedup_vs_loop"] > 1) == (big["seconds"] < loop["seconds"])
    assert big["driver_mem_ratio_vs_small"] > 0 and big["peak_workers_MB"] > 0
    assert loop["peak_workers_MB"] is None and loop["peak_driver_MB"] > 0  # the loop ran in its own process
    assert list((tmp_path / "work" / "out_loop0" / "shards").glob("*.parquet"))
    assert "| single-process loop (10)" in capsys.readouterr().out
