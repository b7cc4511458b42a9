"""``crfgan train`` argument errors: shards of another size, and raw scans given as --data, are one-line errors."""

import pytest

from crfgan.config import ConfigError, load_config
from pipelines import cli
from pipelines.train import check_shards_match


def test_size_mismatch_names_the_config_that_fixes_it():
    manifest = {"image_size": 128, "config": {"name": "ct128"}}
    with pytest.raises(ConfigError) as e:
        check_shards_match(load_config("tiny"), "shards", manifest)
    msg = str(e.value)
    assert "\n" not in msg
    assert "128³" in msg and "model.image_size=32" in msg and "--config ct128" in msg
    check_shards_match(load_config("ct128"), "shards", manifest)  # same size: no error


def test_size_mismatch_with_the_same_preset_name_suggests_the_override():
    with pytest.raises(ConfigError, match=r"train with model\.image_size=64"):
        check_shards_match(load_config("tiny"), "shards", {"image_size": 64, "config": {"name": "tiny"}})


def test_cli_reports_a_mismatch_in_one_line_and_exits_2(tmp_path, capsys):
    import json

    (tmp_path / "manifest.json").write_text(json.dumps({"image_size": 128, "config": {"name": "ct128"}, "shards": []}))
    rc = cli.main(["train", "--local", "--data", str(tmp_path), "--config", "tiny"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert err.strip().count("\n") == 0 and "--config ct128" in err


def test_raw_scans_as_data_say_to_preprocess_first(tmp_path, capsys):
    rc = cli.main(["train", "--local", "--data", str(tmp_path), "--storage", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert rc == 2 and "no manifest.json" in err and "crfgan preprocess" in err


def test_preprocess_and_train_default_to_the_same_config():
    p = cli.build_parser()
    pre = p.parse_args(["preprocess", "--input", "scans", "--output", "shards"])
    train = p.parse_args(["train", "--data", "shards"])
    assert pre.config == train.config
    a, b = load_config(pre.config), load_config(train.config)
    assert a.data_hash() == b.data_hash() and a.model.image_size == b.model.image_size
