"""ModelPusher component: Pusher's spec plus the evaluation and examples it describes."""

from __future__ import annotations

from tfx import types
from tfx.dsl.components.base import base_component, executor_spec
from tfx.proto import pusher_pb2
from tfx.types import standard_artifacts, standard_component_specs
from tfx.types.component_spec import ChannelParameter, ComponentSpec

from components.model_pusher import executor


class ModelPusherSpec(ComponentSpec):
    PARAMETERS = standard_component_specs.PusherSpec.PARAMETERS
    INPUTS = {
        **standard_component_specs.PusherSpec.INPUTS,
        executor.EVALUATION_KEY: ChannelParameter(type=standard_artifacts.ModelEvaluation),
        executor.EXAMPLES_KEY: ChannelParameter(type=standard_artifacts.Examples),
    }
    OUTPUTS = standard_component_specs.PusherSpec.OUTPUTS
    TYPE_ANNOTATION = standard_component_specs.PusherSpec.TYPE_ANNOTATION


class ModelPusher(base_component.BaseComponent):
    """Pushes a blessed model like TFX's Pusher, with ``assets.extra/release.json`` inside.

    The release file carries what a server or an edge app needs beside the graph: class
    names, the per-class score thresholds (max F1 on the eval split) and the evaluation's
    headline metrics, plus the dataset hashes the model was trained and judged on. It is
    written into the model before the copy, so it is there when ``saved_model.pb`` (copied
    last) makes TF Serving load the version.
    """

    SPEC_CLASS = ModelPusherSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(executor.Executor)

    def __init__(
        self,
        model: types.BaseChannel,
        model_blessing: types.BaseChannel,
        evaluation: types.BaseChannel,
        examples: types.BaseChannel,
        push_destination: pusher_pb2.PushDestination,
    ):
        """
        Args:
          model / model_blessing / push_destination: as TFX's Pusher.
          evaluation: the Evaluator's ``evaluation`` output for this model.
          examples: the Examples the model was trained and evaluated on.
        """
        super().__init__(spec=ModelPusherSpec(
            model=model,
            model_blessing=model_blessing,
            evaluation=evaluation,
            examples=examples,
            push_destination=push_destination,
            pushed_model=types.Channel(type=standard_artifacts.PushedModel),
        ))
