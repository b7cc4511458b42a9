from crfgan.memory import peak_rss_bytes


def test_peak_rss_unit_follows_the_platform():
    """ru_maxrss is KiB on Linux and bytes on macOS."""
    assert peak_rss_bytes("linux", 2048) == 2048 * 1024
    assert peak_rss_bytes("darwin", 2048) == 2048


def test_peak_rss_of_this_process_is_plausible():
    assert 10 * 2**20 < peak_rss_bytes() < 1024 * 2**30  # between 10 MiB and 1 TiB: the unit is bytes


def test_peak_memory_mb_on_cpu_is_the_peak_rss():
    import torch

    from crfgan.memory import peak_memory_mb, peak_rss_bytes

    for dev in (None, "cpu", torch.device("cpu")):
        before = peak_rss_bytes() / 2**20
        mb = peak_memory_mb(dev)
        assert before <= mb <= peak_rss_bytes() / 2**20 and mb > 10
