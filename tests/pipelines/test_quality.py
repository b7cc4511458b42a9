"""The driver-side preparation of fd_ssl_quick: cache location under the run storage, and off when asked."""

from __future__ import annotations

from crfgan.config import load_config
from pipelines.quality import cache_location, quality_state


def test_cache_location_local_and_s3_with_endpoint():
    assert cache_location("/runs/") == ("/runs/quality", "")
    uri, ep = cache_location("s3://b/runs?endpoint_override=127.0.0.1:9000&scheme=http")
    assert uri == "s3://b/runs/quality" and ep == "http://127.0.0.1:9000"


def test_quality_off_reads_nothing():
    cfg = load_config("tiny", ["eval.quick_volumes=0"])
    assert quality_state(cfg, "/does/not/exist", {}, "/nowhere") is None
