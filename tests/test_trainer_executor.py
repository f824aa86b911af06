"""hparams.json -> custom properties on the Model artifact."""

from __future__ import annotations

import json

from tfx.types import standard_artifacts

from trainer import executor

HPARAMS = {
    "input_size": 160, "learning_rate": 8e-3, "warmup_epochs": 1.0, "model_size": "small",
    "class_names": ["circle", "square"], "final_eval_loss": None, "flag": True,
}


def test_hparam_properties_keep_scalars_and_json_encode_the_rest():
    props = executor.hparam_properties(HPARAMS)
    assert props == {
        "hparam_input_size": 160, "hparam_learning_rate": 8e-3, "hparam_warmup_epochs": 1.0,
        "hparam_model_size": "small", "hparam_class_names": '["circle", "square"]',
        "hparam_final_eval_loss": "null", "hparam_flag": "true",
    }
    assert type(props["hparam_input_size"]) is int
    assert type(props["hparam_warmup_epochs"]) is float
    assert json.loads(props["hparam_class_names"]) == HPARAMS["class_names"]


def test_record_hparams_uses_matching_mlmd_value_kinds():
    model = standard_artifacts.Model()
    executor.record_hparams(model, HPARAMS)
    custom = model.mlmd_artifact.custom_properties
    kinds = {key: value.WhichOneof("value") for key, value in custom.items()}
    assert kinds == {
        "hparam_input_size": "int_value", "hparam_learning_rate": "double_value",
        "hparam_warmup_epochs": "double_value", "hparam_model_size": "string_value",
        "hparam_class_names": "string_value", "hparam_final_eval_loss": "string_value",
        "hparam_flag": "string_value",
    }
    assert custom["hparam_input_size"].int_value == 160
    assert custom["hparam_learning_rate"].double_value == 8e-3
    assert model.get_string_custom_property("hparam_model_size") == "small"
