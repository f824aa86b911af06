"""components.coco_eval: cocoeval against pycocotools, and the TFMA metric in a real evaluation."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_model_analysis as tfma
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from components.coco_eval import calibration, cocoeval, metric
from data import feature_spec as fs
from tests.detection_outputs import outputs_from_rows, rows_from_outputs
from tests.fake_detector import save_fake_detector

CLASS_NAMES = ("circle", "square", "triangle", "star")  # "star" never has GT
NUM_CLASSES = len(CLASS_NAMES)
TOLERANCE = 1e-4
_NO_DETECTIONS = (np.zeros((0, 4), np.float32), np.zeros(0, np.int64), np.zeros(0, np.float32))

# --- pycocotools on the same arrays ------------------------------------------------------


def _pixel_xywh(box: np.ndarray, height: float, width: float) -> list[float]:
    x0, y0, x1, y1 = (float(v) for v in box)
    return [x0 * width, y0 * height, (x1 - x0) * width, (y1 - y0) * height]


def _mean_defined(values: np.ndarray) -> float:
    return float(values[values > -1].mean()) if (values > -1).any() else -1.0


def run_pycocotools(images: list[cocoeval.ImageData], num_classes: int) -> COCOeval:
    """COCOeval('bbox') on a COCO dataset and results built from the ImageData arrays."""
    categories = [{"id": k + 1} for k in range(num_classes)]
    gt = {"images": [], "annotations": [], "categories": categories}
    results = []
    for image_id, im in enumerate(images, start=1):
        gt["images"].append({"id": image_id, "height": im.height, "width": im.width})
        for box, cls, area, crowd in zip(im.gt_boxes, im.gt_classes, im.gt_areas, im.gt_crowd,
                                         strict=True):
            gt["annotations"].append({
                "id": len(gt["annotations"]) + 1, "image_id": image_id, "category_id": int(cls),
                "bbox": _pixel_xywh(box, im.height, im.width), "area": float(area),
                "iscrowd": int(crowd),
            })
        for box, cls, score in zip(im.det_boxes, im.det_classes, im.det_scores, strict=True):
            results.append({"image_id": image_id, "category_id": int(cls), "score": float(score),
                            "bbox": _pixel_xywh(box, im.height, im.width)})
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        evaluator = COCOeval(coco, coco.loadRes(results), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def pycocotools_summary(images: list[cocoeval.ImageData], num_classes: int) -> cocoeval.Summary:
    evaluator = run_pycocotools(images, num_classes)
    ap = evaluator.eval["precision"][:, :, :, 0, -1]  # area all, 100 detections
    num_gt = np.zeros((num_classes, len(cocoeval.AREA_RANGES)), int)
    for entry in evaluator.evalImgs:
        if entry is not None:
            area = evaluator.params.areaRng.index(list(entry["aRng"]))
            num_gt[entry["category_id"] - 1, area] += int(np.sum(~entry["gtIgnore"].astype(bool)))
    return cocoeval.Summary(
        stats=np.array(evaluator.stats),
        class_ap=np.array([_mean_defined(ap[:, :, k]) for k in range(num_classes)]),
        class_ap50=np.array([_mean_defined(ap[0, :, k]) for k in range(num_classes)]),
        class_pr50=ap[0].T,
        num_gt=num_gt,
    )


def pycocotools_matches_at_50(
    images: list[cocoeval.ImageData], num_classes: int
) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """Per class: (scores, right) of counted detections at IoU .5, area all, and #GT."""
    evaluator = run_pycocotools(images, num_classes)
    per_class = [([], [], 0) for _ in range(num_classes)]
    for entry in evaluator.evalImgs:
        if entry is None or list(entry["aRng"]) != evaluator.params.areaRng[0]:
            continue
        scores, right, num_gt = per_class[entry["category_id"] - 1]
        counted = ~entry["dtIgnore"][0].astype(bool)
        scores.extend(np.asarray(entry["dtScores"])[counted])
        right.extend(entry["dtMatches"][0][counted] > 0)
        num_gt += int(np.sum(~entry["gtIgnore"].astype(bool)))
        per_class[entry["category_id"] - 1] = (scores, right, num_gt)
    return [(np.array(s, np.float64), np.array(r, bool), n) for s, r, n in per_class]


def oracle_ece(scores: np.ndarray, right: np.ndarray) -> float:
    """D-ECE with explicit bin edges."""
    edges = np.linspace(0, 1, calibration.NUM_BINS + 1)
    total = 0.0
    for b in range(calibration.NUM_BINS):
        last = b == calibration.NUM_BINS - 1
        inside = (scores >= edges[b]) & ((scores <= edges[b + 1]) if last else
                                         (scores < edges[b + 1]))
        if inside.any():
            total += inside.sum() * abs(right[inside].mean() - scores[inside].mean())
    return total / len(scores) if len(scores) else -1.0


def oracle_threshold(scores: np.ndarray, right: np.ndarray, num_gt: int) -> tuple[float, float]:
    """Brute force over every distinct score, highest first."""
    if num_gt == 0:
        return -1.0, -1.0
    best = (calibration.NEVER, 0.0)
    for t in sorted(set(scores.tolist()), reverse=True):
        kept = scores >= t
        f1 = 2 * right[kept].sum() / (kept.sum() + num_gt)
        if f1 > best[1]:
            best = (t, f1)
    return best


def assert_summaries_close(actual: cocoeval.Summary, expected: cocoeval.Summary) -> None:
    np.testing.assert_allclose(actual.stats, expected.stats, atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(actual.class_ap, expected.class_ap, atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(actual.class_ap50, expected.class_ap50, atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(actual.class_pr50, expected.class_pr50, atol=TOLERANCE, rtol=0)
    np.testing.assert_array_equal(actual.num_gt, expected.num_gt)


# --- random scenes -------------------------------------------------------------------------


def random_ground_truth(rng: np.random.Generator, num_objects: int) -> cocoeval.ImageData:
    """An image with objects of all COCO sizes (classes 1..3), a few crowd regions, duplicate
    boxes (IoU ties) and annotation areas below the box area (like polygons); no detections.
    Values are float32, what a tf.Example holds."""
    height, width = (int(v) for v in rng.integers(150, 640, 2))
    side = np.exp(rng.uniform(np.log(5), np.log(260), (num_objects, 2)))
    side = np.minimum(side, [width - 1, height - 1])
    corner = rng.uniform(0, 1, (num_objects, 2)) * ([width, height] - side)
    boxes = np.concatenate([corner, corner + side], axis=1) / [width, height, width, height]
    duplicate = rng.random(num_objects) < 0.1
    boxes[duplicate] = boxes[np.flatnonzero(duplicate) - 1]
    return cocoeval.ImageData(
        height=height, width=width,
        gt_boxes=boxes.astype(np.float32),
        gt_classes=rng.integers(1, NUM_CLASSES, num_objects),
        gt_areas=(side.prod(axis=1) * rng.uniform(0.5, 1.0, num_objects)).astype(np.float32),
        gt_crowd=rng.random(num_objects) < 0.15,
        det_boxes=_NO_DETECTIONS[0], det_classes=_NO_DETECTIONS[1], det_scores=_NO_DETECTIONS[2],
    )


def random_detections(rng: np.random.Generator, gt: cocoeval.ImageData, num_false: int):
    """Jittered copies of the GT (some with a wrong class) plus random false positives of any
    class, including the GT-less class and ids outside 1..NUM_CLASSES."""
    copies = rng.integers(0, 4, len(gt.gt_boxes))
    true = np.repeat(gt.gt_boxes, copies, axis=0)
    size = np.tile(true[:, 2:] - true[:, :2], 2)
    true = true + rng.normal(0, 0.08, true.shape) * size
    true_classes = np.where(rng.random(len(true)) < 0.85, np.repeat(gt.gt_classes, copies),
                            rng.integers(1, NUM_CLASSES + 1, len(true)))
    extent = rng.uniform(0.02, 0.5, (num_false, 2))
    corner = rng.uniform(0, 1, (num_false, 2)) * (1 - extent)
    false = np.concatenate([corner, corner + extent], axis=1)
    boxes = np.concatenate([true, false]).astype(np.float32)
    classes = np.concatenate([true_classes, rng.integers(0, NUM_CLASSES + 2, num_false)])
    return boxes, classes.astype(np.int64), rng.random(len(boxes)).astype(np.float32)


def random_images(seed: int, num_images: int = 16) -> list[cocoeval.ImageData]:
    """Images with and without GT, without detections, with > 100 detections; odd seeds
    round scores to 0.1 so that score ties exercise pycocotools' stable sorts."""
    rng = np.random.default_rng(seed)
    images = []
    for i in range(num_images):
        gt = random_ground_truth(rng, 0 if i % 5 == 1 else int(rng.integers(1, 9)))
        num_false = 150 if i % 4 == 3 else int(rng.integers(0, 6))
        dets = _NO_DETECTIONS if i % 6 == 2 else random_detections(rng, gt, num_false)
        if seed % 2:
            dets = (dets[0], dets[1], np.round(dets[2], 1))
        images.append(gt._replace(det_boxes=dets[0], det_classes=dets[1], det_scores=dets[2]))
    return images


# --- cocoeval vs pycocotools ---------------------------------------------------------------


def test_random_cases_cover_the_hard_parts():
    images = random_images(0)
    expected = pycocotools_summary(images, NUM_CLASSES)
    assert any(im.gt_crowd.any() for im in images)
    assert any(len(im.gt_boxes) == 0 for im in images)
    assert any(len(im.det_boxes) == 0 for im in images)
    assert any(len(im.det_boxes) > 100 for im in images)
    assert any((im.det_classes == NUM_CLASSES).any() for im in images)  # class without GT
    assert (expected.stats[3:6] > 0).all()  # small, medium and large objects found
    assert expected.class_ap[-1] == -1 and (expected.class_ap[:-1] > 0).all()


@pytest.mark.parametrize("seed", range(8))
def test_cocoeval_matches_pycocotools(seed):
    images = random_images(seed)
    assert_summaries_close(cocoeval.evaluate(images, NUM_CLASSES),
                           pycocotools_summary(images, NUM_CLASSES))


def test_undefined_settings_are_minus_one_like_pycocotools():
    """Tiny images hold only small objects: medium/large AP and AR are -1 in both."""
    images = [im._replace(height=30, width=30, gt_areas=im.gt_areas * 900 / (im.height * im.width))
              for im in random_images(3, num_images=4)]
    expected = pycocotools_summary(images, NUM_CLASSES)
    assert (expected.stats[[4, 5, 10, 11]] == -1).all()
    assert_summaries_close(cocoeval.evaluate(images, NUM_CLASSES), expected)


def _image(gt_boxes, gt_classes, gt_areas, gt_crowd, det_boxes, det_classes, det_scores):
    return cocoeval.ImageData(
        128, 128, np.array(gt_boxes, np.float32).reshape(-1, 4), np.array(gt_classes),
        np.array(gt_areas, np.float32), np.array(gt_crowd, bool),
        np.array(det_boxes, np.float32).reshape(-1, 4), np.array(det_classes),
        np.array(det_scores, np.float32),
    )


def test_crowd_regions_absorb_detections_without_being_used_up():
    """Detections inside a crowd region are neither TP nor FP, however many there are."""
    image = _image(
        gt_boxes=[[0.1, 0.1, 0.2, 0.3], [0.5, 0.0, 1.0, 1.0]], gt_classes=[1, 1],
        gt_areas=[400, 10000], gt_crowd=[0, 1],
        det_boxes=[[0.1, 0.1, 0.2, 0.3], [0.6, 0.1, 0.7, 0.3], [0.8, 0.5, 0.9, 0.9]],
        det_classes=[1, 1, 1], det_scores=[0.5, 0.9, 0.8],
    )
    summary = cocoeval.evaluate([image], 1)
    assert summary.stats[0] == pytest.approx(1.0)
    assert_summaries_close(summary, pycocotools_summary([image], 1))


def test_iou_ties_go_to_the_later_gt():
    """The first detection covers two GT exactly half each (IoU 0.5 with both): pycocotools
    matches it to the later one, leaving the earlier GT to the second detection."""
    image = _image(
        gt_boxes=[[0, 0, 0.25, 0.25], [0.25, 0, 0.5, 0.25]], gt_classes=[1, 1],
        gt_areas=[1024, 1024], gt_crowd=[0, 0],
        det_boxes=[[0, 0, 0.5, 0.25], [0, 0, 0.25, 0.25]], det_classes=[1, 1],
        det_scores=[0.9, 0.8],
    )
    summary = cocoeval.evaluate([image], 1)
    assert summary.stats[1] == pytest.approx(1.0)  # AP50: both detections are TP
    assert_summaries_close(summary, pycocotools_summary([image], 1))


def test_no_detections_at_all():
    """pycocotools cannot load empty results; COCO defines AP = AR = 0 where there is GT."""
    image = random_images(0)[0]._replace(det_boxes=_NO_DETECTIONS[0],
                                         det_classes=_NO_DETECTIONS[1],
                                         det_scores=_NO_DETECTIONS[2])
    summary = cocoeval.evaluate([image], NUM_CLASSES)
    assert set(summary.stats) <= {0.0, -1.0} and summary.stats[0] == 0.0
    assert summary.class_ap[-1] == -1


# --- the TFMA metric -----------------------------------------------------------------------


def detect(model_path: str, examples: list[bytes],
           images: list[cocoeval.ImageData]) -> list[cocoeval.ImageData]:
    """``images`` with the model's detections, truncated to num_detections, in numpy."""
    outputs = tf.saved_model.load(model_path).signatures["serving_examples"](
        examples=tf.constant(examples))
    dets = rows_from_outputs({k: v.numpy() for k, v in outputs.items()})
    counts = outputs[fs.NUM_DETECTIONS].numpy()
    return [im._replace(det_boxes=d[:n, :4], det_classes=d[:n, 4].astype(int), det_scores=d[:n, 5])
            for im, d, n in zip(images, dets, counts, strict=True)]


def to_example(image: cocoeval.ImageData, camera: str) -> bytes:
    x0, y0, x1, y1 = image.gt_boxes.T
    texts = [CLASS_NAMES[c - 1] for c in image.gt_classes]
    return fs.build_example(
        encoded=b"", image_format="jpeg", height=image.height, width=image.width,
        source_id="", boxes=list(zip(y0, x0, y1, x1, strict=True)),
        labels=image.gt_classes.tolist(), texts=texts, areas=image.gt_areas.tolist(),
        is_crowd=image.gt_crowd.astype(int).tolist(),
        meta={"camera": camera},
    ).SerializeToString()


def metric_config(**kwargs) -> tfma.MetricConfig:
    return tfma.MetricConfig(
        class_name="CocoDetectionMetrics", module="components.coco_eval.metric",
        config=json.dumps({"class_names": list(CLASS_NAMES), "min_images": MIN_IMAGES}), **kwargs,
    )


CAMERA = fs.meta_key("camera")
# cam-c: one image with small objects of class 1 only, so most numbers are -1 there.
_CAM_C = cocoeval.ImageData(
    300, 300, np.array([[0.1, 0.1, 0.15, 0.14], [0.5, 0.5, 0.56, 0.55]], np.float32),
    np.array([1, 1]), np.array([100.0, 200.0], np.float32), np.array([False, False]),
    *_NO_DETECTIONS,
)


@pytest.fixture(scope="module")
def tfma_run(tmp_path_factory) -> dict:
    """One run_model_analysis: candidate vs baseline, sliced by camera, gated on mAP change."""
    root = tmp_path_factory.mktemp("tfma")
    images = [random_ground_truth(np.random.default_rng(i), i % 7) for i in range(14)] + [_CAM_C]
    cameras = ["cam-a" if i % 3 else "cam-b" for i in range(14)] + ["cam-c"]
    examples = [to_example(im, cam) for im, cam in zip(images, cameras, strict=True)]
    data = str(root / "data.tfrecord")
    with tf.io.TFRecordWriter(data) as writer:
        for example in examples:
            writer.write(example)
    models = {"candidate": 0.15, "baseline": 0.4}
    for name, jitter in models.items():
        save_fake_detector(str(root / name), jitter)
    overall = tfma.SlicingSpec()
    gate = tfma.PerSliceMetricThreshold(slicing_specs=[overall], threshold=tfma.MetricThreshold(
        change_threshold=tfma.GenericChangeThreshold(
            direction=tfma.MetricDirection.HIGHER_IS_BETTER, absolute={"value": -0.01})))
    config = tfma.EvalConfig(
        model_specs=[tfma.ModelSpec(name=name, signature_name="serving_examples",
                                    is_baseline=name == "baseline") for name in models],
        slicing_specs=[overall, tfma.SlicingSpec(feature_keys=[CAMERA])],
        metrics_specs=[tfma.MetricsSpec(metrics=[metric_config(per_slice_thresholds=[gate])])],
    )
    shared = [tfma.default_eval_shared_model(str(root / name), eval_config=config,
                                             model_name=name) for name in models]
    out = str(root / "out")
    tfma.run_model_analysis(eval_shared_model=shared, eval_config=config, data_location=data,
                            output_path=out)
    results = {}
    for metrics in tfma.load_metrics(out):
        slice_key = tuple((k.column, k.bytes_value.decode())
                          for k in metrics.slice_key.single_slice_keys)
        for kv in metrics.metric_keys_and_values:
            model = kv.key.model_name + ("-diff" if kv.key.is_diff else "")
            value = kv.value.double_value.value if kv.value.HasField("double_value") else (
                np.array(kv.value.array_value.float64_values))
            results.setdefault((slice_key, model), {})[kv.key.name] = value
    return {
        "results": results, "validation": tfma.load_validation_result(out),
        "detections": {name: detect(str(root / name), examples, images) for name in models},
        "cameras": cameras,
    }


MIN_IMAGES = 10  # overall (15 images) has enough; the camera slices do not


def expected_metrics(images: list[cocoeval.ImageData]) -> dict[str, float | list[float]]:
    """The metric's keys and values, from pycocotools on the same images."""
    summary = pycocotools_summary(images, NUM_CLASSES)
    matches = pycocotools_matches_at_50(images, NUM_CLASSES)
    expected = dict(zip((metric.MAP, *metric.STAT_NAMES), summary.stats, strict=True))
    enough = len(images) >= MIN_IMAGES
    all_scores = np.concatenate([s for s, _, _ in matches])
    all_right = np.concatenate([r for _, r, _ in matches])
    expected.update({
        metric.NUM_IMAGES: len(images), metric.ENOUGH_IMAGES: int(enough),
        metric.SLICE_MAP: summary.stats[0] if enough else 0.0,
        metric.NUM_OBJECTS: summary.num_gt[:, 0].sum(),
        metric.DECE: oracle_ece(all_scores, all_right),
        metric.RELIABILITY_COUNT: np.histogram(all_scores, np.linspace(0, 1, 11))[0].tolist(),
    })
    for size, area in zip(metric.SIZE_NAMES, (1, 2, 3), strict=True):
        expected[f"{metric.NUM_OBJECTS}_{size}"] = summary.num_gt[:, area].sum()
    for k, name in enumerate(CLASS_NAMES):
        scores, right, num_gt = matches[k]
        expected[f"{metric.NUM_OBJECTS}/{name}"] = num_gt
        if len(scores):
            expected[f"{metric.DECE}/{name}"] = oracle_ece(scores, right)
        if summary.class_ap[k] > -1:
            expected[metric.CLASS_AP_PREFIX + name] = summary.class_ap[k]
            expected[metric.CLASS_AP50_PREFIX + name] = summary.class_ap50[k]
            threshold, f1 = oracle_threshold(scores, right, num_gt)
            expected[metric.THRESHOLD_PREFIX + name] = threshold
            expected[metric.F1_PREFIX + name] = f1
            expected[metric.PR50_PREFIX + name] = summary.class_pr50[k].tolist()
    return expected


# The reliability diagram's mean score and precision per bin follow from D-ECE's inputs.
_NOT_COMPARED = {metric.RELIABILITY_SCORE, metric.RELIABILITY_PRECISION}


def _assert_metrics(actual: dict, expected: dict) -> None:
    assert actual.keys() - _NOT_COMPARED == expected.keys()
    for name, value in expected.items():
        np.testing.assert_allclose(actual[name], value, atol=TOLERANCE, rtol=0, err_msg=name)


@pytest.mark.parametrize("model", ["candidate", "baseline"])
@pytest.mark.parametrize("camera", [None, "cam-a", "cam-c"])
def test_tfma_metric_equals_pycocotools(tfma_run, model, camera):
    images = [im for im, cam in zip(tfma_run["detections"][model], tfma_run["cameras"], strict=True)
              if camera in (None, cam)]
    slice_key = ((CAMERA, camera),) if camera else ()
    _assert_metrics(tfma_run["results"][slice_key, model], expected_metrics(images))


def test_tfma_metric_reports_undefined_numbers_as_minus_one(tfma_run):
    cam_c = tfma_run["results"][((CAMERA, "cam-c"),), "candidate"]
    assert cam_c[metric.MAP] > 0 and cam_c["mAP_large"] == -1 and cam_c["AR_medium"] == -1
    assert "AP/circle" in cam_c and "AP/square" not in cam_c and "AP/star" not in cam_c


def test_tfma_change_threshold_gates_map(tfma_run):
    results = tfma_run["results"]
    diff = results[(), "candidate-diff"][metric.MAP]
    assert diff == pytest.approx(
        results[(), "candidate"][metric.MAP] - results[(), "baseline"][metric.MAP])
    assert diff > 0.01 and tfma_run["validation"].validation_ok
    assert tfma_run["validation"].validation_details.slicing_details[0].num_matching_slices == 1


# --- inputs and errors -------------------------------------------------------------------


def _features() -> dict[str, np.ndarray]:
    """One example's features as TFMA extracts hold them."""
    return {
        fs.IMAGE_HEIGHT: np.array([100]), fs.IMAGE_WIDTH: np.array([200]),
        fs.BBOX_XMIN: np.array([0.1]), fs.BBOX_YMIN: np.array([0.2]),
        fs.BBOX_XMAX: np.array([0.3]), fs.BBOX_YMAX: np.array([0.4]),
        fs.CLASS_LABEL: np.array([2]), fs.AREA: np.array([50.0]), fs.IS_CROWD: np.array([0]),
    }


def _outputs() -> dict[str, np.ndarray]:
    dets = np.array([[0.1, 0.2, 0.3, 0.4, 2.0, 0.9], [0, 0, 1, 1, 1, 0.8]], np.float32)
    return outputs_from_rows(dets, np.array(1, np.int32))


@pytest.mark.parametrize("model_name", ["", "candidate"])
def test_preprocessor_reads_features_and_named_outputs(model_name):
    predictions = {model_name: _outputs()} if model_name else _outputs()
    extracts = {tfma.FEATURES_KEY: _features(), tfma.PREDICTIONS_KEY: predictions}
    (computation,) = metric.CocoDetectionMetrics(CLASS_NAMES).computations(
        model_names=[model_name])
    (preprocessor,) = computation.preprocessors
    (image,) = preprocessor.process(extracts)
    assert (image.height, image.width) == (100, 200)
    np.testing.assert_allclose(image.gt_boxes, [[0.1, 0.2, 0.3, 0.4]])
    assert image.det_classes.tolist() == [2] and image.det_scores.tolist() == [pytest.approx(0.9)]


@pytest.mark.parametrize("missing", [fs.AREA, fs.IS_CROWD, fs.BBOX_YMAX, fs.IMAGE_WIDTH])
def test_missing_feature_is_named(missing):
    features = _features()
    del features[missing]
    with pytest.raises(KeyError, match=f"feature '{missing}'"):
        metric.image_data(features, _outputs())


@pytest.mark.parametrize("missing", fs.DETECTION_OUTPUTS)
def test_missing_model_output_is_named(missing):
    outputs = _outputs()
    del outputs[missing]
    with pytest.raises(KeyError, match=f"model output '{missing}'"):
        metric.image_data(_features(), outputs)


def test_unnamed_model_output_is_rejected():
    with pytest.raises(KeyError, match=fs.DETECTION_BOXES):
        metric.image_data(_features(), np.zeros((3, 6)))


def test_boxes_in_another_format_are_rejected_naming_it():
    outputs = _outputs()
    outputs[fs.DETECTION_BOXES] = np.array([[0.4, 0.3, 0.2, 0.1], [0, 0, 1, 1]], np.float32)
    with pytest.raises(ValueError, match="detection_boxes: 1 of 1 boxes given as yxyx have "
                                         "min > max corners"):
        metric.image_data(_features(), outputs)


def test_per_object_features_must_agree():
    features = {**_features(), fs.AREA: np.array([50.0, 60.0])}
    with pytest.raises(ValueError, match="per-object"):
        metric.image_data(features, _outputs())



def test_score_ties_across_images_rank_the_same_in_any_merge_order():
    """Beam hands the combiner images in no fixed order; equal scores must not change AP."""
    hit = _image(gt_boxes=[[0.1, 0.1, 0.4, 0.4]], gt_classes=[1], gt_areas=[1500],
                 gt_crowd=[0], det_boxes=[[0.1, 0.1, 0.4, 0.4]], det_classes=[1],
                 det_scores=[0.5])._replace(image_id="1")
    miss = _image(gt_boxes=[[0.5, 0.5, 0.9, 0.9]], gt_classes=[1], gt_areas=[2600],
                  gt_crowd=[0], det_boxes=[[0.0, 0.6, 0.2, 0.8]], det_classes=[1],
                  det_scores=[0.5])._replace(image_id="2")
    combiner = metric._CocoCombiner(["circle"], "mAP", "", min_images=1)
    outputs = [combiner.extract_output(order) for order in ([hit, miss], [miss, hit])]
    assert outputs[0].keys() == outputs[1].keys()
    for key, value in outputs[0].items():
        np.testing.assert_array_equal(value, outputs[1][key], err_msg=key.name)
    # pycocotools ranks the tie in image-id order: the hit first, so AP50 = 0.5.
    expected = pycocotools_summary([hit, miss], 1)
    assert outputs[0][metric_types_key("mAP50")] == pytest.approx(expected.stats[1])


def metric_types_key(name: str):
    return tfma.metrics.MetricKey(name=name, model_name="")


@pytest.mark.parametrize("seed", [0, 1])
def test_match_cache_gives_the_uncached_metrics_in_every_slice(seed):
    images = random_images(seed, num_images=24)
    cache = cocoeval.MatchCache()
    for subset in (images, images[::2], images[1::3], images):  # overall, then slices
        cached = metric.coco_metrics(subset, ["a", "b", "c"], min_images=1, cache=cache)
        fresh = metric.coco_metrics(subset, ["a", "b", "c"], min_images=1)
        assert cached.keys() == fresh.keys()
        for key, value in fresh.items():
            np.testing.assert_array_equal(cached[key], value, err_msg=key)
