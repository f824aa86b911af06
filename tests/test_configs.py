"""Run configuration: typed sections, presets, checked overrides and their error messages."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from pipelines import configs
from pipelines.cli import main


def test_overrides_reach_every_section():
    config = configs.load("tiny", [
        "train.epochs=3", "gates.map_floor=0.25", "data.synthetic.seed=9",
        'beam.extra_args=["--direct_num_workers=4"]', "edge.enabled=false",
        "drift.on_drift=warn", "enable_cache=true", "data.root=/data/coco",
    ])
    assert config.train.hparams == {"epochs": 3, "input_size": 96, "batch_size": 8}
    assert config.gates.map_floor == 0.25 and isinstance(config.gates.map_floor, float)
    assert config.data.synthetic.seed == 9 and config.data.root == "/data/coco"
    assert config.beam.pipeline_args()[-1] == "--direct_num_workers=4"
    assert not config.edge.enabled and config.drift.on_drift == "warn" and config.enable_cache
    assert configs.CONFIGS["tiny"].train.hparams["epochs"] == 1  # presets are not mutated


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.epoch=3", "unknown setting 'train.epoch' (did you mean 'train.epochs'?)"),
        ("map_floor=0.3", "unknown setting 'map_floor' (did you mean 'gates.map_floor'?)"),
        ("gates.map_flor=0.3", "did you mean 'gates.map_floor'?"),
        ("data.synthetic.size=3", "did you mean 'data.synthetic.seed'?"),
        ("beam_direct_running_mode=multi_processing",
         "did you mean 'beam.direct_running_mode'?"),
        ("gates=1", "'gates' is a section; set one of its keys"),
        ("map_floor", "must look like key=value"),
        ("train.epochs=three", "expected an integer"),
        ("train.epochs=0", "epochs=0; must be >= 1"),
        ("train.model_size=huge", "model_size='huge'"),
        ("gates.map_floor=high", "gates.map_floor='high': expected a number"),
        ("gates.map_floor=1.5", "map_floor=1.5; mAP lies in [0, 1]"),
        ("gates.min_slice_images=2.5", "expected an integer"),
        ("edge.enabled=maybe", "expected true or false"),
        ("drift.on_drift=ignore", "on_drift='ignore'; use one of ('fail', 'warn')"),
        ("beam.direct_running_mode=threads", "use one of ('in_memory', 'multi_processing')"),
        ("beam.extra_args=--runner=X", "expected a JSON list of strings"),
        ('data.split_buckets={"train": 4}', "exactly the splits 'train' and 'eval'"),
        ("data.images_root=span-{SPAN}/images",
         "images_root='span-{SPAN}/images' has a span, but annotations_pattern="
         "'annotations.json' has none"),
        ("data.allow_absolute_paths=maybe", "expected true or false"),
    ],
)
def test_bad_overrides_fail_at_load_naming_the_key(override, message):
    with pytest.raises(ValueError) as error:
        configs.load("default", [override])
    assert message in str(error.value)


def test_image_settings_parse():
    config = configs.load("default", ["data.images_root=train", "data.allow_absolute_paths=true"])
    assert config.data.images_root == "train" and config.data.allow_absolute_paths is True
    default = configs.load("default").data
    assert default.images_root is None and default.allow_absolute_paths is False


def test_the_images_flag_sets_data_images_root(tmp_path):
    # A span without one in the pattern fails at load: the flag reached data.images_root.
    result = CliRunner().invoke(main, ["run", "--home", str(tmp_path), "--data", str(tmp_path),
                                       "--images", "span-{SPAN}/images"])
    assert result.exit_code == 2
    assert "images_root='span-{SPAN}/images' has a span" in result.output
    assert list(tmp_path.iterdir()) == []


def test_a_custom_run_fn_takes_its_own_hparams():
    config = configs.load("tiny", ["train.run_fn=my.module.run_fn", "train.jitter=0.5"])
    assert config.train.hparams["jitter"] == 0.5
    # Checked against the default run_fn's TrainConfig only when it is the run_fn.
    with pytest.raises(ValueError, match="did you mean 'train.seed'"):
        configs.load("tiny", ["train.seeds=1"])


def test_another_runner_drops_the_direct_runner_flags():
    config = configs.load("default", ['beam.extra_args=["--runner=FlinkRunner"]'])
    assert config.beam.pipeline_args() == ["--runner=FlinkRunner"]
    assert "--direct_running_mode=in_memory" in configs.load("default").beam.pipeline_args()


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"choose one of \['default', 'ten_minutes', 'tiny'\]"):
        configs.load("huge")


def test_every_listed_key_is_settable():
    config = configs.load("default")
    flat = configs.flat_settings(config)
    assert set(flat) == set(configs.setting_keys())
    assert flat["train.epochs"] == 32 and flat["gates.map_floor"] == 0.1
    for key, value in flat.items():
        raw = json.dumps(list(value) if isinstance(value, tuple) else value)
        if isinstance(value, str):
            raw = value
        assert configs.flat_settings(configs.load("default", [f"{key}={raw}"])) == flat, key


def test_a_typo_fails_the_cli_before_anything_runs(tmp_path):
    result = CliRunner().invoke(main, ["run", "--home", str(tmp_path), "--set", "train.epoch=3"])
    assert result.exit_code == 2
    assert "did you mean 'train.epochs'?" in result.output
    assert list(tmp_path.iterdir()) == []  # no dataset, no store, no log: nothing started


def test_config_command_prints_every_key(tmp_path):
    result = CliRunner().invoke(main, ["config", "--config", "tiny", "--set", "train.epochs=2"])
    assert result.exit_code == 0, result.output
    flat = json.loads(result.stdout)
    assert flat["train.epochs"] == 2 and flat["pipeline_name"] == "sightline-tiny"


def test_home_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(configs.HOME_ENV, str(tmp_path))
    assert configs.home_dir() == str(tmp_path)
    assert configs.Paths(configs.home_dir(), "p").metadata == str(tmp_path / "metadata.sqlite")


def test_only_the_ten_minute_preset_has_a_time_budget():
    assert configs.load("default").train.hparams.get("time_budget_s", 0) == 0
    assert configs.load("ten_minutes").train.hparams["time_budget_s"] == \
        configs.TEN_MINUTE_BUDGET_S
