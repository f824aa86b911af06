"""The Sightline DAG. ``create_pipeline`` is pure: every setting arrives as an argument.

Runners (``local_runner.py``, ``kubeflow_runner.py``) work out paths and call it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

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
from trainer import executor as trainer_executor

TRAINER_RUN_FN = "trainer.task.run_fn"
MAP_METRIC = "mAP"  # the gated metric: COCO AP@[.5:.95]
COCO_METRICS_MODULE = "components.coco_eval.metric"


class Trainer(tfx.components.Trainer):
    """TFX's Trainer whose executor also records the model's hparams in MLMD."""

    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(trainer_executor.Executor)


def create_pipeline(
    *,
    pipeline_name: str,
    pipeline_root: str,
    data_root: str,
    annotations_pattern: str,
    schema_path: str,
    class_names: Sequence[str],
    train_config: dict[str, Any],
    serving_model_dir: str,
    split_buckets: dict[str, int] | None = None,
    map_floor: float = 0.0,
    max_map_regression: float = 0.01,
    gated_slices: Sequence[str] = fs.META_KEYS,
    max_slice_map_regression: float = 0.05,
    min_slice_images: int = 20,
    run_fn: str = TRAINER_RUN_FN,
    on_drift: str = "fail",
    psi_threshold: float = 0.25,
    box_fit_tolerance: float = 0.3,
    previous_span_strategy: type = LatestIfAnyStrategy,
    edge_bundle_dir: str | None = None,
    qat_epochs: int = 1,
    qat_learning_rate: float = 1e-4,
    edge_map_tolerance: float = 0.01,
    metadata_connection_config: Any = None,
    beam_pipeline_args: Sequence[str] = (),
    enable_cache: bool = False,
) -> tfx.dsl.Pipeline:
    """Builds COCO ingestion -> data checks -> training -> gated evaluation -> push.

    Args:
      data_root / annotations_pattern: the COCO dataset (``span-{SPAN}/...`` for spans).
      schema_path: the curated schema file; it also defines the label space.
      class_names: label i+1 is class_names[i] (read from the schema by the runner).
      train_config: the Trainer's custom_config (see trainer/config.py).
      serving_model_dir: TF Serving model base path; versions are pushed below it.
      map_floor / max_map_regression / gated_slices / max_slice_map_regression /
        min_slice_images: the blessing gates, see ``eval_config``.
      run_fn: the Trainer's ``run_fn`` (module path): the detector in ``trainer/`` by default.
      on_drift / psi_threshold / box_fit_tolerance: the drift gate (see DriftCheck); the
        L∞ / JS thresholds are the schema's drift comparators.
      previous_span_strategy: how the previous span is resolved (Kubeflow needs TFX's own
        LatestArtifactStrategy).
      edge_bundle_dir: where EdgePusher writes edge bundles; None leaves out the edge
        branch (EdgeOptimizer and EdgePusher), e.g. for a run_fn whose model is not the
        Keras detector in ``trainer/``.
      qat_epochs / qat_learning_rate: the QAT fine-tune; edge_map_tolerance: how much
        mAP a shipped TFLite variant may lose versus the float model.
    """
    # Ingest COCO images and boxes; bad records are quarantined, splits are hashed.
    example_gen = CocoExampleGen(
        input_base=data_root, annotations_pattern=annotations_pattern, split_buckets=split_buckets
    )
    # The reviewed schema, never re-inferred: data changes must show up as anomalies.
    schema_gen = tfx.components.ImportSchemaGen(schema_file=schema_path)
    # Per-split feature statistics: what the schema check and drift checks read. With the
    # schema, categorical ints (the class label) get value counts.
    statistics_gen = tfx.components.StatisticsGen(
        examples=example_gen.outputs["examples"], schema=schema_gen.outputs["schema"])
    # Compare this data's statistics with the schema.
    example_validator = tfx.components.ExampleValidator(
        statistics=statistics_gen.outputs["statistics"], schema=schema_gen.outputs["schema"]
    )
    # The previous span: the latest statistics and examples recorded before this run (the
    # resolver runs before ExampleGen, so never this run's own).
    previous_span = tfx.dsl.Resolver(
        strategy_class=previous_span_strategy,
        statistics=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ExampleStatistics),
        examples=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Examples),
    ).with_id("previous_span_resolver")
    example_gen.add_upstream_node(previous_span)
    # Span-over-span drift (L∞, JS, PSI) and annotation quality, recorded in MLMD.
    drift_check = DriftCheck(
        statistics=statistics_gen.outputs["statistics"],
        examples=example_gen.outputs["examples"],
        schema=schema_gen.outputs["schema"],
        baseline_statistics=previous_span.outputs["statistics"],
        baseline_examples=previous_span.outputs["examples"],
        psi_threshold=psi_threshold,
        box_fit_tolerance=box_fit_tolerance,
    )
    # Anomalies (and drift, with on_drift="fail") stop the run here, naming them.
    anomaly_gate = AnomalyGate(
        anomalies=example_validator.outputs["anomalies"],
        drift=drift_check.outputs["drift"],
        on_drift=on_drift,
    )
    # Train the detector, export the serving signatures, record its hparams in MLMD.
    trainer = Trainer(
        run_fn=run_fn,
        examples=example_gen.outputs["examples"],
        schema=schema_gen.outputs["schema"],
        train_args=tfx.proto.TrainArgs(splits=["train"]),
        eval_args=tfx.proto.EvalArgs(splits=["eval"]),
        custom_config={**train_config, "class_names": list(class_names)},
    )
    trainer.add_upstream_node(anomaly_gate)
    # The latest blessed model, the baseline a candidate must not regress against.
    baseline_resolver = tfx.dsl.Resolver(
        strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
        model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
        model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
    ).with_id("latest_blessed_model_resolver")
    # Exact COCO mAP overall and per slice; blesses the model only if the gates hold.
    evaluator = tfx.components.Evaluator(
        examples=example_gen.outputs["examples"],
        model=trainer.outputs["model"],
        baseline_model=baseline_resolver.outputs["model"],
        eval_config=eval_config(
            class_names=class_names, map_floor=map_floor, max_map_regression=max_map_regression,
            gated_slices=gated_slices, max_slice_map_regression=max_slice_map_regression,
            min_slice_images=min_slice_images,
        ),
        schema=schema_gen.outputs["schema"],
    )
    # Publish blessed models as a new version of the TF Serving model directory.
    # With assets.extra/release.json: class thresholds, metrics, dataset hashes.
    pusher = ModelPusher(
        model=trainer.outputs["model"],
        model_blessing=evaluator.outputs["blessing"],
        evaluation=evaluator.outputs["evaluation"],
        examples=example_gen.outputs["examples"],
        push_destination=tfx.proto.PushDestination(
            filesystem=tfx.proto.PushDestination.Filesystem(base_directory=serving_model_dir)
        ),
    ).with_id("Pusher")
    components = [
        previous_span, example_gen, statistics_gen, schema_gen, example_validator,
        drift_check, anomaly_gate, trainer, baseline_resolver, evaluator, pusher,
    ]
    if edge_bundle_dir:
        # QAT + float32/fp16/int8 TFLite variants, each scored like the float model.
        edge_optimizer = EdgeOptimizer(
            model=trainer.outputs["model"],
            examples=example_gen.outputs["examples"],
            qat_epochs=qat_epochs,
            qat_learning_rate=qat_learning_rate,
            min_slice_images=min_slice_images,
        )
        # For a blessed model: the smallest variant within the tolerance, as a bundle.
        edge_pusher = EdgePusher(
            model_blessing=evaluator.outputs["blessing"],
            examples=example_gen.outputs["examples"],
            edge_evaluation=edge_optimizer.outputs["edge_evaluation"],
            variants={key: edge_optimizer.outputs[key]
                      for key in EdgeOptimizer.SPEC_CLASS.OUTPUTS if key.endswith("_model")},
            base_directory=edge_bundle_dir,
            map_tolerance=edge_map_tolerance,
        )
        components += [edge_optimizer, edge_pusher]
    return tfx.dsl.Pipeline(
        pipeline_name=pipeline_name,
        pipeline_root=pipeline_root,
        components=components,
        enable_cache=enable_cache,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=list(beam_pipeline_args),
    )


def eval_config(
    *,
    class_names: Sequence[str],
    map_floor: float,
    max_map_regression: float,
    gated_slices: Sequence[str] = fs.META_KEYS,
    max_slice_map_regression: float = 0.05,
    min_slice_images: int = 20,
) -> tfma.EvalConfig:
    """TFMA config: exact COCO metrics sliced overall and by metadata, and the gates.

    ``CocoDetectionMetrics`` reproduces pycocotools' COCOeval (crowd and area-range
    ignore semantics, 101-point AP) in one pass per slice, with calibration, per-class
    thresholds and per-class / per-size counts; TFMA's built-in COCO metrics approximate it
    and are ~100x slower (``benchmarks/eval_bench.py``: 1866 s vs 18.3 s on 587 images).
    Per class and per object size are object-level slices, so they are metric keys
    (``AP/<class>``, ``mAP_small``, ...).

    Gates (a model is blessed only if all hold):
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
            value_threshold=tfma.GenericValueThreshold(lower_bound={"value": map_floor}),
            change_threshold=tfma.GenericChangeThreshold(
                direction=higher_is_better, absolute={"value": -max_map_regression},
            ),
        ),
    )
    slice_gate = tfma.PerSliceMetricThreshold(
        slicing_specs=[tfma.SlicingSpec(feature_keys=[key]) for key in gated_slices],
        threshold=tfma.MetricThreshold(change_threshold=tfma.GenericChangeThreshold(
            direction=higher_is_better, absolute={"value": -max_slice_map_regression},
        )),
    )
    coco_config = {"class_names": list(class_names), "name": MAP_METRIC,
                   "min_images": min_slice_images}
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
        if gated_slices else {}
    )
    return tfma.EvalConfig(
        model_specs=[tfma.ModelSpec(signature_name="serving_examples")],
        slicing_specs=[overall] + [tfma.SlicingSpec(feature_keys=[k]) for k in fs.META_KEYS],
        metrics_specs=[tfma.MetricsSpec(
            metrics=metrics, per_slice_thresholds=per_slice_thresholds,
        )],
    )
