"""The Sightline DAG. ``create_pipeline`` is pure: every setting arrives as an argument.

Runners (``local_runner.py``, ``kubeflow_runner.py``) work out paths and call it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, NamedTuple

import tensorflow_model_analysis as tfma
from tfx import v1 as tfx
from tfx.dsl.components.base import executor_spec

from components.anomaly_gate import AnomalyGate
from components.coco_eval import metric as coco_metric
from components.coco_example_gen import CocoExampleGen
from components.drift_check import DriftCheck
from components.drift_check.resolver import LatestIfAnyStrategy
from components.edge_optimizer import EdgeOptimizer
from components.edge_pusher import EdgePusher
from components.model_pusher import ModelPusher
from data import feature_spec as fs
from pipelines import teacher as teacher_lib
from pipelines.settings import (
    BeamSettings,
    DataSettings,
    DriftSettings,
    EdgeSettings,
    GateSettings,
    TrainSettings,
)
from trainer import executor as trainer_executor

MAP_METRIC = "mAP"  # the gated metric: COCO AP@[.5:.95]
COCO_METRICS_MODULE = "components.coco_eval.metric"


class Trainer(tfx.components.Trainer):
    """TFX's Trainer whose executor also records the model's hparams in MLMD."""

    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(trainer_executor.Executor)


class _DataStage(NamedTuple):
    """Ingestion and the data checks that must pass before training."""

    previous_span: tfx.dsl.Resolver
    example_gen: CocoExampleGen
    statistics_gen: tfx.components.StatisticsGen
    schema_gen: tfx.components.ImportSchemaGen
    example_validator: tfx.components.ExampleValidator
    drift_check: DriftCheck
    anomaly_gate: AnomalyGate


class _ModelStage(NamedTuple):
    """Training, the gated evaluation and the push of a blessed model."""

    trainer: Trainer
    baseline_resolver: tfx.dsl.Resolver
    evaluator: tfx.components.Evaluator
    pusher: ModelPusher
    teacher: Any  # train.teacher's Resolver or Importer; None without a teacher


def create_pipeline(
    *,
    pipeline_name: str,
    pipeline_root: str,
    data_root: str,
    class_names: Sequence[str],
    serving_model_dir: str,
    data: DataSettings,
    gates: GateSettings,
    drift: DriftSettings,
    train: TrainSettings,
    edge: EdgeSettings,
    beam: BeamSettings,
    edge_bundle_dir: str | None = None,
    previous_span_strategy: type = LatestIfAnyStrategy,
    metadata_connection_config: Any = None,
    enable_cache: bool = False,
) -> tfx.dsl.Pipeline:
    """Builds COCO ingestion -> data checks -> training -> gated evaluation -> push.

    Args:
      data_root: the COCO dataset folder (``data.annotations_pattern`` is relative to it).
      class_names: label i+1 is class_names[i] (read from ``data.schema_path`` by the runner).
      serving_model_dir: TF Serving model base path; versions are pushed below it.
      data / gates / drift / train / edge / beam: the typed settings
        (``pipelines.settings``); their defaults live there and nowhere else.
      edge_bundle_dir: where EdgePusher writes edge bundles; needed when ``edge.enabled``.
      previous_span_strategy: how the previous span is resolved (Kubeflow needs TFX's own
        LatestArtifactStrategy).
    """
    data_stage = _data_components(data_root, data, drift, previous_span_strategy)
    model_stage = _model_components(data_stage, class_names, train, gates, serving_model_dir)
    components = [c for c in (*data_stage, *model_stage) if c is not None]
    if edge.enabled:
        if not edge_bundle_dir:
            raise ValueError("edge.enabled needs an edge_bundle_dir to push bundles to")
        components += _edge_components(edge, edge_bundle_dir, gates.min_slice_images,
                                       data_stage.example_gen, model_stage)
    return tfx.dsl.Pipeline(
        pipeline_name=pipeline_name,
        pipeline_root=pipeline_root,
        components=components,
        enable_cache=enable_cache,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=beam.pipeline_args(),
    )


def _data_components(data_root: str, data: DataSettings, drift: DriftSettings,
                     previous_span_strategy: type) -> _DataStage:
    # The previous span: the latest statistics and examples recorded before this run (the
    # resolver runs before ExampleGen, so never this run's own).
    previous_span = tfx.dsl.Resolver(
        strategy_class=previous_span_strategy,
        statistics=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ExampleStatistics),
        examples=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Examples),
    ).with_id("previous_span_resolver")
    # Ingest COCO images and boxes; bad records are quarantined, splits are hashed.
    example_gen = CocoExampleGen(input_base=data_root,
                                 annotations_pattern=data.annotations_pattern,
                                 split_buckets=dict(data.split_buckets),
                                 images_root=data.images_root,
                                 allow_absolute_paths=data.allow_absolute_paths,
                                 span=data.span)
    example_gen.add_upstream_node(previous_span)
    # The reviewed schema, never re-inferred: data changes must show up as anomalies.
    schema_gen = tfx.components.ImportSchemaGen(schema_file=data.schema_path)
    # Per-split feature statistics: what the schema check and drift checks read. With the
    # schema, categorical ints (the class label) get value counts.
    statistics_gen = tfx.components.StatisticsGen(
        examples=example_gen.outputs["examples"], schema=schema_gen.outputs["schema"])
    # Compare this data's statistics with the schema.
    example_validator = tfx.components.ExampleValidator(
        statistics=statistics_gen.outputs["statistics"], schema=schema_gen.outputs["schema"])
    # Span-over-span drift (L∞, JS, PSI) and annotation quality, recorded in MLMD.
    drift_check = DriftCheck(
        statistics=statistics_gen.outputs["statistics"],
        examples=example_gen.outputs["examples"],
        schema=schema_gen.outputs["schema"],
        baseline_statistics=previous_span.outputs["statistics"],
        baseline_examples=previous_span.outputs["examples"],
        psi_threshold=drift.psi_threshold,
        box_fit_tolerance=drift.box_fit_tolerance,
    )
    # Too little data, anomalies (and drift, with on_drift="fail") stop the run here.
    anomaly_gate = AnomalyGate(anomalies=example_validator.outputs["anomalies"],
                               drift=drift_check.outputs["drift"], on_drift=drift.on_drift,
                               examples=example_gen.outputs["examples"],
                               min_examples_per_split=data.min_examples_per_split,
                               max_quarantined_fraction=data.max_quarantined_fraction)
    return _DataStage(previous_span, example_gen, statistics_gen, schema_gen,
                      example_validator, drift_check, anomaly_gate)


def _model_components(data: _DataStage, class_names: Sequence[str], train: TrainSettings,
                      gates: GateSettings, serving_model_dir: str) -> _ModelStage:
    examples = data.example_gen.outputs["examples"]
    # train.teacher: the latest Model of that size in MLMD, or the export at that path, as
    # the Trainer's base_model, so the student's lineage records its teacher.
    teacher = teacher_lib.teacher_node(dict(train.hparams), class_names)
    # Train the detector, export the serving signatures, record its hparams in MLMD.
    trainer = Trainer(
        run_fn=train.run_fn,
        examples=examples,
        schema=data.schema_gen.outputs["schema"],
        train_args=tfx.proto.TrainArgs(splits=["train"]),
        eval_args=tfx.proto.EvalArgs(splits=["eval"]),
        custom_config={**train.hparams, "class_names": list(class_names)},
        base_model=teacher_lib.teacher_channel(teacher) if teacher else None,
    )
    trainer.add_upstream_node(data.anomaly_gate)
    # The latest blessed model, the baseline a candidate must not regress against.
    baseline_resolver = tfx.dsl.Resolver(
        strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
        model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
        model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
    ).with_id("latest_blessed_model_resolver")
    # Exact COCO mAP overall and per slice; blesses the model only if the gates hold.
    evaluator = tfx.components.Evaluator(
        examples=examples,
        model=trainer.outputs["model"],
        baseline_model=baseline_resolver.outputs["model"],
        eval_config=eval_config(class_names, gates),
        schema=data.schema_gen.outputs["schema"],
    )
    # Publish blessed models as a new version of the TF Serving model directory.
    # With assets.extra/release.json: class thresholds, metrics, dataset hashes.
    pusher = ModelPusher(
        model=trainer.outputs["model"],
        model_blessing=evaluator.outputs["blessing"],
        evaluation=evaluator.outputs["evaluation"],
        examples=examples,
        push_destination=tfx.proto.PushDestination(
            filesystem=tfx.proto.PushDestination.Filesystem(base_directory=serving_model_dir)
        ),
    ).with_id("Pusher")
    return _ModelStage(trainer, baseline_resolver, evaluator, pusher, teacher)


def _edge_components(edge: EdgeSettings, edge_bundle_dir: str, min_slice_images: int,
                     example_gen: CocoExampleGen, model: _ModelStage) -> list[Any]:
    """The edge branch: TFLite variants of the trained model, and the bundle that ships."""
    # QAT + float32/fp16/int8 TFLite variants, each scored like the float model.
    edge_optimizer = EdgeOptimizer(
        model=model.trainer.outputs["model"],
        examples=example_gen.outputs["examples"],
        qat_epochs=edge.qat_epochs,
        qat_learning_rate=edge.qat_learning_rate,
        min_slice_images=min_slice_images,
    )
    # For a blessed model: the smallest variant within the tolerance, as a bundle.
    edge_pusher = EdgePusher(
        model_blessing=model.evaluator.outputs["blessing"],
        examples=example_gen.outputs["examples"],
        edge_evaluation=edge_optimizer.outputs["edge_evaluation"],
        variants={key: edge_optimizer.outputs[key]
                  for key in EdgeOptimizer.SPEC_CLASS.OUTPUTS if key.endswith("_model")},
        base_directory=edge_bundle_dir,
        map_tolerance=edge.map_tolerance,
    )
    return [edge_optimizer, edge_pusher]


def eval_config(class_names: Sequence[str], gates: GateSettings) -> tfma.EvalConfig:
    """TFMA config: exact COCO metrics sliced overall and by metadata, and the gates.

    ``CocoDetectionMetrics`` reproduces pycocotools' COCOeval (crowd and area-range
    ignore semantics, 101-point AP) in one pass per slice, with calibration, per-class
    thresholds and per-class / per-size counts; TFMA's built-in COCO metrics approximate it
    and are about 100x slower (``docs/evaluation.md``, measured by ``benchmarks.eval_bench``).
    Per class and per object size are object-level slices, so they are metric keys
    (``AP/<class>``, ``mAP_small``, ...).

    Gates (a model is blessed only if all hold; the values are ``gates``'s fields):
      * overall mAP >= ``map_floor``;
      * overall mAP >= the latest blessed model's - ``max_map_regression``;
      * on every slice of each ``gated_slices`` feature: ``slice_mAP`` (the slice's mAP,
        or 0 for both models when it has fewer than ``min_slice_images`` images) >= the
        baseline's - ``max_slice_map_regression``.
    Change gates need a baseline: the first blessed model is judged by the floor alone.
    """
    overall = tfma.SlicingSpec()
    higher_is_better = tfma.MetricDirection.HIGHER_IS_BETTER
    map_gate = tfma.PerSliceMetricThreshold(
        slicing_specs=[overall],
        threshold=tfma.MetricThreshold(
            value_threshold=tfma.GenericValueThreshold(lower_bound={"value": gates.map_floor}),
            change_threshold=tfma.GenericChangeThreshold(
                direction=higher_is_better, absolute={"value": -gates.max_map_regression},
            ),
        ),
    )
    slice_gate = tfma.PerSliceMetricThreshold(
        slicing_specs=[tfma.SlicingSpec(feature_keys=[key]) for key in gates.gated_slices],
        threshold=tfma.MetricThreshold(change_threshold=tfma.GenericChangeThreshold(
            direction=higher_is_better, absolute={"value": -gates.max_slice_map_regression},
        )),
    )
    coco_config = {"class_names": list(class_names), "name": MAP_METRIC,
                   "min_images": gates.min_slice_images}
    metrics = [
        tfma.MetricConfig(
            class_name="CocoDetectionMetrics",
            module=COCO_METRICS_MODULE,
            config=json.dumps(coco_config),
            per_slice_thresholds=[map_gate],
        ),
        tfma.MetricConfig(class_name="ExampleCount"),
    ]
    # Thresholds on a key the metric computes besides its main one go on the MetricsSpec.
    per_slice_thresholds = (
        {coco_metric.SLICE_MAP: tfma.PerSliceMetricThresholds(thresholds=[slice_gate])}
        if gates.gated_slices else {}
    )
    return tfma.EvalConfig(
        model_specs=[tfma.ModelSpec(signature_name="serving_examples")],
        slicing_specs=[overall] + [tfma.SlicingSpec(feature_keys=[k]) for k in fs.META_KEYS],
        metrics_specs=[tfma.MetricsSpec(
            metrics=metrics, per_slice_thresholds=per_slice_thresholds,
        )],
    )
