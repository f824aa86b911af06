"""EdgePusher component: a blessed model's best passing TFLite variant as an edge bundle."""

from __future__ import annotations

from tfx import types
from tfx.dsl.components.base import base_component, executor_spec
from tfx.types import artifact, standard_artifacts
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter

from components.edge_optimizer import EdgeEvaluation, TFLiteModel
from components.edge_optimizer import executor as edge_executor
from components.edge_pusher import executor


class EdgeBundle(artifact.Artifact):
    """An edge push: custom properties pushed, variant, reason, destination, version."""

    TYPE_NAME = "sightline.EdgeBundle"


class EdgePusherSpec(ComponentSpec):
    PARAMETERS = {
        executor.BASE_DIRECTORY_KEY: ExecutionParameter(type=str),
        executor.TOLERANCE_KEY: ExecutionParameter(type=float),
    }
    INPUTS = {
        executor.BLESSING_KEY: ChannelParameter(type=standard_artifacts.ModelBlessing),
        executor.EXAMPLES_KEY: ChannelParameter(type=standard_artifacts.Examples),
        edge_executor.EVALUATION_KEY: ChannelParameter(type=EdgeEvaluation),
        **{key: ChannelParameter(type=TFLiteModel)
           for key in edge_executor.OUTPUT_KEYS.values()},
    }
    OUTPUTS = {executor.BUNDLE_KEY: ChannelParameter(type=EdgeBundle)}


class EdgePusher(base_component.BaseComponent):
    """Writes ``<base_directory>/<version>/`` for a model the Evaluator blessed.

    The bundle: ``model.tflite``, ``labels.txt`` (label i+1 on line i+1), per-class score
    thresholds of that variant (``thresholds.json``, max F1 on the eval split),
    ``input_spec.json`` (shape, dtype, quantization, normalisation, output types) and
    ``metadata.json`` (variant, why it was chosen, its metrics and the float model's,
    dataset split hashes, source URIs). The int8 variants ship only within
    ``map_tolerance`` mAP of the float model (default 0.01, one point); otherwise the
    next variant that passes ships and the artifact's ``reason`` says why.
    """

    SPEC_CLASS = EdgePusherSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(executor.Executor)

    def __init__(
        self,
        model_blessing: types.BaseChannel,
        examples: types.BaseChannel,
        edge_evaluation: types.BaseChannel,
        variants: dict[str, types.BaseChannel],
        base_directory: str,
        map_tolerance: float = 0.01,
    ):
        """
        Args:
          variants: the EdgeOptimizer's outputs (``{"qat_int8_model": channel, ...}``).
        """
        super().__init__(spec=EdgePusherSpec(
            model_blessing=model_blessing,
            examples=examples,
            edge_evaluation=edge_evaluation,
            base_directory=base_directory,
            map_tolerance=map_tolerance,
            edge_bundle=types.Channel(type=EdgeBundle),
            **variants,
        ))
