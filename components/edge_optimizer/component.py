"""EdgeOptimizer component: the trained model's TFLite variants, each an MLMD artifact."""

from __future__ import annotations

import json
from collections.abc import Sequence

from tfx import types
from tfx.dsl.components.base import base_component, executor_spec
from tfx.types import artifact, standard_artifacts
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter

from components.edge_optimizer import executor
from data import feature_spec as fs


class TFLiteModel(artifact.Artifact):
    """One TFLite variant (``model.tflite``); custom properties: variant, size, metrics."""

    TYPE_NAME = "sightline.TFLiteModel"


class EdgeEvaluation(artifact.Artifact):
    """Every variant and the float SavedModel scored alike (``edge_evaluation.json``)."""

    TYPE_NAME = "sightline.EdgeEvaluation"


class EdgeOptimizerSpec(ComponentSpec):
    PARAMETERS = {
        executor.QAT_EPOCHS_KEY: ExecutionParameter(type=int),
        executor.QAT_LEARNING_RATE_KEY: ExecutionParameter(type=float),
        executor.REPRESENTATIVE_KEY: ExecutionParameter(type=int),
        executor.SLICE_KEYS_KEY: ExecutionParameter(type=str),
        executor.MIN_SLICE_IMAGES_KEY: ExecutionParameter(type=int),
    }
    INPUTS = {
        executor.MODEL_KEY: ChannelParameter(type=standard_artifacts.Model),
        executor.EXAMPLES_KEY: ChannelParameter(type=standard_artifacts.Examples),
    }
    OUTPUTS = {
        **{key: ChannelParameter(type=TFLiteModel) for key in executor.OUTPUT_KEYS.values()},
        executor.EVALUATION_KEY: ChannelParameter(type=EdgeEvaluation),
    }


class EdgeOptimizer(base_component.BaseComponent):
    """Float32, float16, post-training int8 and QAT int8 TFLite models of the trained one.

    QAT fine-tunes a fake-quantized copy of the detector for ``qat_epochs`` with the
    training loss and input pipeline; PTQ calibrates on ``representative_examples``
    training images. Every variant and the float SavedModel are then scored on the eval
    split by the Evaluator's exact COCO metric and slices (D-ECE included: quantization
    can move calibration). EdgePusher decides which variant ships.
    """

    SPEC_CLASS = EdgeOptimizerSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(executor.Executor)

    def __init__(
        self,
        model: types.BaseChannel,
        examples: types.BaseChannel,
        qat_epochs: int = 1,
        qat_learning_rate: float = 1e-4,
        representative_examples: int = 200,
        slice_keys: Sequence[str] = fs.META_KEYS,
        min_slice_images: int = 20,
    ):
        super().__init__(spec=EdgeOptimizerSpec(
            model=model,
            examples=examples,
            qat_epochs=qat_epochs,
            qat_learning_rate=qat_learning_rate,
            representative_examples=representative_examples,
            slice_keys=json.dumps(list(slice_keys)),
            min_slice_images=min_slice_images,
            edge_evaluation=types.Channel(type=EdgeEvaluation),
            **{key: types.Channel(type=TFLiteModel) for key in executor.OUTPUT_KEYS.values()},
        ))
