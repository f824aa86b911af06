"""Trainer executor: TFX's generic trainer, plus the hyperparameters recorded in MLMD.

``run_fn`` saves ``assets.extra/hparams.json`` beside the model; copying it onto the
Model artifact as custom properties (before TFX publishes it) makes the hyperparameters
queryable in ML Metadata without opening the model, and they travel with its lineage.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import tensorflow as tf
from tfx import types
from tfx.components.trainer.executor import GenericExecutor
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import path_utils

from trainer.export import ASSETS_EXTRA, HPARAMS_FILE

HPARAM_PREFIX = "hparam_"  # custom properties hparam_<key> on the Model artifact (MLMD)


def hparam_properties(hparams: Mapping[str, Any]) -> dict[str, int | float | str]:
    """``hparams.json`` -> custom property values MLMD can hold and filter on.

    Ints, floats and strings keep their type; anything else (lists such as class_names,
    bools, None) becomes a JSON string, so every value round-trips through ``json.loads``.
    """
    properties: dict[str, int | float | str] = {}
    for key, value in hparams.items():
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            value = json.dumps(value)
        properties[HPARAM_PREFIX + key] = value
    return properties


def record_hparams(model: types.Artifact, hparams: Mapping[str, Any]) -> None:
    """Sets the ``hparam_<key>`` custom properties on the Model artifact."""
    for name, value in hparam_properties(hparams).items():
        if isinstance(value, int):
            model.set_int_custom_property(name, value)
        elif isinstance(value, float):
            model.set_float_custom_property(name, value)
        else:
            model.set_string_custom_property(name, value)


class Executor(GenericExecutor):
    """Runs ``run_fn``, then records the exported model's hparams.json on its artifact."""

    def Do(  # noqa: N802 (TFX API)
        self,
        input_dict: dict[str, list[types.Artifact]],
        output_dict: dict[str, list[types.Artifact]],
        exec_properties: dict[str, Any],
    ) -> None:
        super().Do(input_dict, output_dict, exec_properties)
        model = artifact_utils.get_single_instance(output_dict[standard_component_specs.MODEL_KEY])
        path = os.path.join(path_utils.serving_model_path(model.uri), ASSETS_EXTRA, HPARAMS_FILE)
        with tf.io.gfile.GFile(path) as f:
            record_hparams(model, json.load(f))
