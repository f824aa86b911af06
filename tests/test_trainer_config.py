"""TrainConfig: parsing custom_config, fix-it errors, round trip."""

from __future__ import annotations

import pytest

from trainer.config import TrainConfig


def test_round_trip_and_defaults():
    config = TrainConfig.from_dict({"class_names": ["a", "b"], "epochs": 3, "learning_rate": 1})
    assert config.class_names == ("a", "b") and config.num_classes == 2
    assert config.epochs == 3 and config.learning_rate == 1.0
    assert config.max_detections == 100 and config.strategy == "default"
    assert TrainConfig.from_dict(config.to_dict()) == config
    assert config.to_dict()["class_names"] == ["a", "b"]


def test_unknown_key_suggests_the_right_one():
    with pytest.raises(ValueError, match="'learning_rat' \\(did you mean 'learning_rate'\\?\\)"):
        TrainConfig.from_dict({"class_names": ["a"], "learning_rat": 0.1})


def test_class_names_are_required():
    with pytest.raises(ValueError, match="needs 'class_names'"):
        TrainConfig.from_dict({"epochs": 1})


@pytest.mark.parametrize(
    "override, message",
    [
        ({"model_size": "huge"}, "model_size='huge'"),
        ({"strategy": "tpu"}, "strategy='tpu'"),
        ({"input_size": 100}, "multiple of 32"),
        ({"batch_size": 0}, "batch_size=0"),
        ({"epochs": 2.5}, "expected an integer"),
        ({"learning_rate": True}, "expected float"),
        ({"class_names": ["a", "a"]}, "duplicates"),
        ({"precision": "fp16"}, "precision=.fp16."),
        ({"time_budget_s": -1}, "time_budget_s=-1"),
    ],
)
def test_bad_values_are_rejected_with_the_field_name(override, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_dict({"class_names": ["a"], **override})


@pytest.mark.parametrize("teacher", ["", "medium", "small", "./teacher",
                                     "/srv/models/sightline/1733", "gs://bucket/teacher"])
def test_a_teacher_is_off_a_model_size_or_a_path(teacher):
    config = TrainConfig.from_dict({"class_names": ["a"], "teacher": teacher})
    assert config.teacher == teacher and config.distill_weight == 1.0
    assert TrainConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize("override, message", [
    ({"teacher": "mediun"}, "teacher='mediun' \\(did you mean 'medium'\\?\\); use a model size"),
    ({"teacher": "teacher_dir"}, "or an exported model's path"),
    ({"teacher": 3}, "teacher=3"),
    ({"teacher": "medium", "distill_weight": 0}, "distill_weight=0.0; must be > 0"),
])
def test_a_bad_teacher_is_rejected_with_a_fix(override, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_dict({"class_names": ["a"], **override})
