import re

import pytest

from crfgan.config import Config, ConfigError, config_from_dict, crf_num_nodes, load_config, preset_names


@pytest.mark.parametrize("name", ["tiny", "ct64", "ct128", "ct256", "ct512", "mri256"])
def test_presets_load_and_validate(name):
    cfg = load_config(name)
    assert cfg.name == name
    assert cfg.model.image_size in (32, 64, 128, 256, 512)


def test_preset_list_has_the_required_ones():
    assert {"tiny", "ct64", "ct128", "ct256", "mri256"} <= set(preset_names())


def test_dotted_overrides_are_typed():
    cfg = load_config("tiny", ["model.crf.iterations=5", "train.lr_g=2e-4", "model.crf.nodes=channels",
                               "train.share_fakes=false", "data.ct_window=[-1000, 400]"])
    assert cfg.model.crf.iterations == 5 and isinstance(cfg.model.crf.iterations, int)
    assert cfg.train.lr_g == 2e-4
    assert cfg.model.crf.nodes == "channels"
    assert cfg.train.share_fakes is False
    assert cfg.data.ct_window == (-1000.0, 400.0)


def test_unknown_key_names_the_closest_valid_key():
    with pytest.raises(ConfigError, match=r"unknown config key 'model\.crf\.iteratons'.*'model\.crf\.iterations'"):
        load_config("tiny", ["model.crf.iteratons=5"])
    with pytest.raises(ConfigError, match="'train.batch_size'"):
        load_config("tiny", ["train.batchsize=3"])


def test_unknown_key_in_a_yaml_file_is_an_error(tmp_path):
    p = tmp_path / "mine.yaml"
    p.write_text("model:\n  image_sise: 64\n")
    with pytest.raises(ConfigError, match="model.image_size"):
        load_config(p)


def test_bad_values_name_the_key():
    with pytest.raises(ConfigError, match="model.image_size"):
        load_config("tiny", ["model.image_size=48"])
    with pytest.raises(ConfigError, match="model.crf.iterations expects int"):
        load_config("tiny", ["model.crf.iterations=many"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config("tiny", ["model.crf.iterations"])
    with pytest.raises(ConfigError, match="unknown config preset 'ct12'; did you mean"):
        load_config("ct12")


def test_flat_dict_and_hash():
    a = load_config("tiny")
    flat = a.flat()
    assert flat["model.crf.iterations"] == 10
    assert flat["train.batch_size"] == 2
    assert all("." in k or k == "name" for k in flat)
    b = load_config("tiny", ["model.crf.iterations=3"])
    assert a.hash() != b.hash()
    assert a.hash() == load_config("tiny").hash()


def test_round_trip_through_dict():
    cfg = load_config("ct128", ["model.arch=hagan", "train.amp=bf16"])
    again = config_from_dict(cfg.to_dict())
    assert again == cfg


def test_crf_node_defaults():
    cfg = Config()
    assert crf_num_nodes(cfg.model) == 32  # the reference: channel groups, S/4 at 128³
    cfg.model.crf.nodes = "slabs"
    assert crf_num_nodes(cfg.model) == 8  # one node per rendered sub-volume


@pytest.mark.parametrize("name", ["ct64", "ct128", "ct256", "ct512", "mri256"])
def test_paper_presets_train_the_reference_model(name):
    """The paper presets: CRF nodes as the reference codes them, a fresh G pass per sub-step, the reference sum."""
    cfg = load_config(name)
    assert cfg.model.crf.nodes == "channels" and cfg.model.crf.pairwise == "sum"
    assert cfg.train.share_fakes is False and cfg.model.num_classes == 0


def test_class_names_are_a_typed_list_checked_against_num_classes():
    cfg = load_config("tiny", ["model.num_classes=2", "model.class_names=[ct, mri]"])
    assert cfg.model.class_names == ["ct", "mri"]
    assert config_from_dict(cfg.to_dict()).model.class_names == ["ct", "mri"]
    with pytest.raises(ConfigError, match="model.class_names lists 2 names but model.num_classes=3"):
        load_config("tiny", ["model.num_classes=3", "model.class_names=[ct, mri]"])


def test_data_hash_ignores_training_settings_but_not_data_ones():
    a = load_config("tiny")
    assert a.data_hash() == load_config("tiny", ["train.iterations=5", "model.crf.iterations=2"]).data_hash()
    assert a.data_hash() != load_config("tiny", ["data.spacing_mm=2.0"]).data_hash()
    assert a.data_hash() != load_config("tiny", ["model.image_size=64"]).data_hash()


@pytest.mark.parametrize("override, key", [
    ("train.log_every=0", "train.log_every"),
    ("train.checkpoint_every=0", "train.checkpoint_every"),
    ("train.val_every=-5", "train.val_every"),
    ("train.iterations=0", "train.iterations"),
    ("train.num_workers=0", "train.num_workers"),
    ("train.lr_g=0", "train.lr_g"),
    ("train.beta2=1.0", "train.beta2"),
    ("train.crf_weight_start=1.5", "train.crf_weight_start"),
    ("train.run_name=a/b", "train.run_name"),
    ("data.val_fraction=1.0", "data.val_fraction"),
    ("data.max_error_fraction=-0.1", "data.max_error_fraction"),
    ("data.ct_window=[600, -1024]", "data.ct_window"),
    ("data.mri_percentiles=[99, 1]", "data.mri_percentiles"),
    ("data.mri_percentiles=[0, 101]", "data.mri_percentiles"),
    ("data.spacing_mm=-1", "data.spacing_mm"),
    ("data.shard_target_mb=0", "data.shard_target_mb"),
    ("data.max_voxels=0", "data.max_voxels"),
    ("data.min_slices=0", "data.min_slices"),
    ("data.spacing_range_mm=[5, 1]", "data.spacing_range_mm"),
    ("model.latent_dim=0", "model.latent_dim"),
    ("synth.actors=-1", "synth.actors"),
    ("synth.halo=-1", "synth.halo"),
    ("tune.mode=lowest", "tune.mode"),
    ("tune.num_samples=0", "tune.num_samples"),
])
def test_every_bad_value_names_its_key(override, key):
    with pytest.raises(ConfigError, match="^" + re.escape(key) + " "):
        load_config("tiny", [override])


@pytest.mark.parametrize("text, expected", [("true", True), ("FALSE", False), ("1", True), ("0", False),
                                            ("yes", True), ("no", False)])
def test_booleans_parse_from_the_documented_words(text, expected):
    assert load_config("tiny", [f"train.compile={text}"]).train.compile is expected


@pytest.mark.parametrize("text", ["on", "off", "y", "2", "maybe", "[true]"])
def test_other_boolean_words_are_refused(text):
    with pytest.raises(ConfigError, match=r"train\.compile expects a boolean"):
        load_config("tiny", [f"train.compile={text}"])


def test_boolean_in_a_yaml_file_must_be_a_boolean(tmp_path):
    p = tmp_path / "mine.yaml"
    p.write_text("train:\n  compile: 7\n")
    with pytest.raises(ConfigError, match=r"train\.compile expects a boolean"):
        load_config(p)


def test_preset_name_wins_over_a_folder_or_file_of_that_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny").mkdir()  # a natural output folder name
    assert load_config("tiny").model.image_size == 32
    (tmp_path / "ct64").write_text("model:\n  image_size: 128\n")
    assert load_config("ct64").model.image_size == 64
    assert load_config("./ct64").model.image_size == 128  # looks like a path: the file
    (tmp_path / "mine.yml").write_text("model:\n  image_size: 64\n")
    assert load_config("mine.yml").model.image_size == 64
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("missing.yaml")


def test_parse_override_is_the_one_reader_of_key_value():
    from crfgan.config import ConfigError, parse_override

    assert parse_override(" train.lr_g =0.0002") == ("train.lr_g", 0.0002, "0.0002")
    assert parse_override("model.crf.nodes=slabs") == ("model.crf.nodes", "slabs", "slabs")
    assert parse_override("train.run_name=") == ("train.run_name", "", "")
    assert parse_override("train.run_name=[oops")[1] == "[oops"  # not YAML: the text itself (set_key then checks it)
    with pytest.raises(ConfigError, match="must look like key=value"):
        parse_override("train.lr_g")


def test_validate_checks_every_section():
    """One failing key per section (each section has its own function): each is named in the error."""
    from crfgan.config import ConfigError, load_config

    for override in ("model.arch=x", "train.amp=x", "synth.gzip=x", "mlflow.experiment=", "data.fit=x",
                     "eval.quick_volumes=1", "tune.mode=x"):
        with pytest.raises(ConfigError, match=override.split("=")[0].replace(".", r"\.")):
            load_config("tiny", [override])


def test_retired_keys_are_dropped_from_stored_configs_and_refused_as_overrides(tmp_path):
    import yaml

    old = load_config("tiny").to_dict()
    old["synth"]["num_volumes"], old["eval"]["num_volumes"] = 4, 4  # a config.json written before they were retired
    assert config_from_dict(old).to_dict() == load_config("tiny").to_dict()
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(old))
    assert load_config(tmp_path / "old.yaml").to_dict() == load_config("tiny").to_dict()
    with pytest.raises(ConfigError, match="'synth.num_volumes' was retired"):
        load_config("tiny", ["synth.num_volumes=8"])
