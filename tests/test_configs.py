"""Run configuration: presets, overrides and their error messages."""

from __future__ import annotations

import pytest

from pipelines import configs


def test_overrides_reach_nested_fields():
    config = configs.load("tiny", ["train.epochs=3", "map_floor=0.25", "synthetic.seed=9",
                                   "beam_extra_args=[\"--runner=FlinkRunner\"]"])
    assert config.train["epochs"] == 3 and config.train["input_size"] == 96
    assert config.map_floor == 0.25 and config.synthetic.seed == 9
    assert "--runner=FlinkRunner" in config.beam_pipeline_args()
    assert configs.CONFIGS["tiny"].train["epochs"] == 1  # presets are not mutated


@pytest.mark.parametrize(
    "override, message",
    [
        ("epochs=3", "unknown field 'epochs' in RunConfig"),
        ("synthetic.size=3", "unknown field 'size' in SyntheticData"),
        ("map_floor", "must look like field=value"),
    ],
)
def test_bad_overrides_say_what_is_wrong(override, message):
    with pytest.raises(ValueError, match=message):
        configs.load("default", [override])


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"choose one of \['default', 'tiny'\]"):
        configs.load("huge")


def test_home_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(configs.HOME_ENV, str(tmp_path))
    assert configs.home_dir() == str(tmp_path)
    assert configs.Paths(configs.home_dir(), "p").metadata == str(tmp_path / "metadata.sqlite")
