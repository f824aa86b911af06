"""benchmarks.eval_bench: the built-in COCO EvalConfig is the pipeline's with other metrics."""

import json

from tensorflow_model_analysis.metrics import metric_specs, metric_types

from benchmarks import eval_bench
from data import feature_spec as fs
from pipelines import configs
from schemas.curate import class_names as schema_class_names


def _configs(num_thresholds):
    config = configs.load("tiny")
    class_names = schema_class_names(config.data.schema_path)
    exact = eval_bench.exact_eval_config(config)
    return config, class_names, exact, eval_bench.builtin_eval_config(
        exact, class_names, num_thresholds)


def test_builtin_config_keeps_model_and_slices_and_swaps_the_metrics():
    config, class_names, exact, builtin = _configs(100)
    assert builtin.model_specs == exact.model_specs
    assert builtin.slicing_specs == exact.slicing_specs
    (spec,) = builtin.metrics_specs
    names = [m.class_name for m in spec.metrics]
    assert names == ["COCOMeanAveragePrecision", "COCOMeanAveragePrecision", "ExampleCount"]
    map_config, map50_config = (json.loads(m.config) for m in spec.metrics[:2])
    assert map_config["name"] == "mAP" and map50_config["name"] == "mAP50"
    assert map_config["iou_thresholds"] == [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9,
                                            0.95]
    assert map50_config["iou_thresholds"] == [0.5]
    assert map_config["class_ids"] == list(range(1, len(class_names) + 1))
    # Both sides in the features' and outputs' box order (YXYX): IoU is the same.
    assert map_config["labels_to_stack"] == [fs.BBOX_YMIN, fs.BBOX_XMIN, fs.BBOX_YMAX,
                                             fs.BBOX_XMAX, fs.CLASS_LABEL]
    assert map_config["predictions_to_stack"] == [fs.DETECTION_BOXES, fs.DETECTION_CLASSES,
                                                  fs.DETECTION_SCORES]
    assert map_config["num_detections_key"] == fs.NUM_DETECTIONS
    assert map_config["max_num_detections"] == 100 and map_config["num_thresholds"] == 100
    # The pipeline's mAP floor gates the built-in mAP too.
    floor = spec.metrics[0].per_slice_thresholds[0].threshold.value_threshold.lower_bound.value
    assert floor == config.gates.map_floor


def test_builtin_default_thresholds_leave_num_thresholds_unset():
    *_, builtin = _configs(None)
    assert "num_thresholds" not in json.loads(builtin.metrics_specs[0].metrics[0].config)


def test_builtin_config_builds_tfma_computations_and_map50_shares_the_map_ones():
    _, class_names, _, builtin = _configs(100)
    computations = metric_specs.to_computations(builtin.metrics_specs, eval_config=builtin)
    public = {k.name for c in computations for k in c.keys if not k.name.startswith("_")}
    assert public == {"mAP", "mAP50", "example_count"}
    # One combiner per class and IoU threshold (+ ExampleCount): mAP50's IoU .5 matchers
    # are the mAP's, deduplicated by TFMA as in the Evaluator.
    combiners = {c for c in computations if type(c) is metric_types.MetricComputation}
    assert len(combiners) == len(class_names) * len(eval_bench.IOU_THRESHOLDS) + 1
