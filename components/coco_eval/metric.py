"""``CocoDetectionMetrics``: official COCO box metrics as one TFMA metric, per slice and model.

TFMA's built-in COCO metrics approximate COCOeval and expand into one Python matcher per
class and IoU threshold (minutes on a few hundred images). This metric instead reduces each
example to its boxes (a preprocessor, run once per example before slicing), collects them
per slice in a Beam ``CombineFn`` and runs ``cocoeval`` once per slice in ``extract_output``.

Configure it like any TFMA metric::

    tfma.MetricConfig(class_name="CocoDetectionMetrics", module="components.coco_eval.metric",
                      config=json.dumps({"class_names": ["circle", "square", ...]}))

Ground truth comes from the example's features (``data.feature_spec`` keys), detections from
the model's named outputs, the contract of every exported signature:
``detection_boxes`` ([K, 4], ``data.boxes.YXYX``), ``detection_classes``,
``detection_scores`` and ``num_detections`` (how many rows are real). Thresholds set on the
MetricConfig gate the AP@[.5:.95] key (``name``, "mAP" by default).

Besides COCOeval's numbers each slice gets what a release decision needs (see
``calibration.py``): image and object counts (overall, per class, per size), D-ECE overall
and per class, each class's max-F1 score threshold, its PR curve at IoU .5 (101 points)
and the reliability diagram's bins. A slice with fewer than ``min_images`` images is
flagged (``enough_images`` = 0) so reports show "too few examples" instead of its numbers,
and its ``slice_mAP`` -- the key per-slice regression gates use -- is 0 for every model,
so a tiny slice cannot veto a blessing by noise.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import apache_beam as beam
import numpy as np
from tensorflow_model_analysis.metrics import metric_types
from tensorflow_model_analysis.utils import util

from components.coco_eval import calibration, cocoeval
from data import boxes
from data import feature_spec as fs

MAP = "mAP"
# Keys of cocoeval.Summary.stats[1:] (pycocotools' stats order); stats[0] is ``name``.
STAT_NAMES = (
    "mAP50", "mAP75", "mAP_small", "mAP_medium", "mAP_large",
    "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large",
)
CLASS_AP_PREFIX = "AP/"
CLASS_AP50_PREFIX = "AP50/"
NUM_IMAGES = "num_images"
ENOUGH_IMAGES = "enough_images"  # 1 if the slice has at least min_images images, else 0
SLICE_MAP = "slice_mAP"  # mAP where there are enough images, else 0: per-slice gates use it
NUM_OBJECTS = "num_objects"  # GT that count (not crowd); per class: "num_objects/<class>"
SIZE_NAMES = ("small", "medium", "large")  # "num_objects_<size>": COCO's area ranges
DECE = "D-ECE"  # per class: "D-ECE/<class>"
THRESHOLD_PREFIX = "score_threshold/"  # max-F1 score threshold per class
F1_PREFIX = "F1/"  # F1 at that threshold
PR50_PREFIX = "PR50/"  # [101] precision at recall 0, .01, ..., 1 (IoU .5), per class
RELIABILITY_COUNT = "reliability/count"  # [NUM_BINS] detections per score bin
RELIABILITY_SCORE = "reliability/score"  # [NUM_BINS] their mean score (-1: empty bin)
RELIABILITY_PRECISION = "reliability/precision"  # [NUM_BINS] share right (-1: empty bin)
DEFAULT_MIN_IMAGES = 20


class CocoDetectionMetrics(metric_types.Metric):
    """COCOeval (bbox) numbers, calibration, thresholds and counts per slice (module doc).

    Summary numbers are -1 where pycocotools gives -1 (no GT in that area range or slice);
    per-class AP, threshold and PR keys are omitted for classes without (non-crowd) GT in
    the slice, D-ECE/<class> for classes without detections.
    """

    def __init__(
        self,
        class_names: Sequence[str],
        name: str = MAP,
        min_images: int = DEFAULT_MIN_IMAGES,
    ):
        """Args:
        class_names: label i+1 is class_names[i]; names the per-class keys.
        name: key of AP@[.5:.95], the number thresholds on this MetricConfig gate.
        min_images: fewer images than this make a slice "too few examples".
        """
        super().__init__(_coco_computations, class_names=list(class_names), name=name,
                         min_images=min_images)


def _coco_computations(
    class_names: Sequence[str],
    name: str = MAP,
    min_images: int = DEFAULT_MIN_IMAGES,
    model_names: Sequence[str] | None = None,
) -> metric_types.MetricComputations:
    """One computation per model (candidate and baseline each get their own keys)."""
    computations = []
    for model_name in model_names or [""]:
        combiner = _CocoCombiner(class_names, name, model_name, min_images)
        preprocessor = _ImagePreprocessor(model_name)
        computations.append(
            metric_types.MetricComputation(
                keys=combiner.keys(), preprocessors=[preprocessor], combiner=combiner
            )
        )
    return computations


def _lookup(values: Mapping[str, Any], key: str, what: str) -> np.ndarray:
    """values[key] as an array, or an error naming the missing key and what is there."""
    if key not in values:
        raise KeyError(
            f"CocoDetectionMetrics needs the {what} '{key}', which is missing; "
            f"available: {sorted(values)}"
        )
    return np.asarray(values[key])


def _scalar(values: Mapping[str, Any], key: str, what: str) -> float:
    """A per-example scalar, which TFMA may hold as shape [] or [1]."""
    return _lookup(values, key, what).reshape(-1)[0].item()


def image_data(features: Mapping[str, Any] | None,
               outputs: Mapping[str, Any] | None) -> cocoeval.ImageData:
    """One example's GT (from its features) and detections (from the model outputs).

    Raises:
      KeyError: a feature or model output is missing; the message names it.
      ValueError: the per-object features disagree in length, or boxes are not in the
        format their key promises (``data.boxes.check``).
    """
    if not isinstance(features, Mapping):
        raise KeyError(f"CocoDetectionMetrics needs the example's features, got {features!r}")
    if not isinstance(outputs, Mapping):
        raise KeyError(
            f"CocoDetectionMetrics needs the named model outputs {list(fs.DETECTION_OUTPUTS)}, "
            f"got {type(outputs).__name__}"
        )
    gt_boxes = boxes.from_features(features, boxes.XYXY)
    per_object = {k: _lookup(features, k, "feature").reshape(-1)
                  for k in (fs.CLASS_LABEL, fs.AREA, fs.IS_CROWD)}
    if any(len(v) != len(gt_boxes) for v in per_object.values()):
        sizes = {k: len(v) for k, v in per_object.items()}
        raise ValueError(f"{len(gt_boxes)} boxes but per-object feature lengths {sizes}")
    count = int(_scalar(outputs, fs.NUM_DETECTIONS, "model output"))
    detected = {k: _lookup(outputs, k, "model output")
                for k in (fs.DETECTION_BOXES, fs.DETECTION_CLASSES, fs.DETECTION_SCORES)}
    det_boxes = boxes.convert(detected[fs.DETECTION_BOXES].reshape(-1, 4)[:count],
                              boxes.YXYX, boxes.XYXY, where=fs.DETECTION_BOXES)
    return cocoeval.ImageData(
        height=_scalar(features, fs.IMAGE_HEIGHT, "feature"),
        width=_scalar(features, fs.IMAGE_WIDTH, "feature"),
        gt_boxes=boxes.check(gt_boxes, boxes.XYXY, "ground truth").astype(np.float32),
        gt_classes=per_object[fs.CLASS_LABEL].astype(np.int64),
        gt_areas=per_object[fs.AREA].astype(np.float32),
        gt_crowd=per_object[fs.IS_CROWD].astype(bool),
        det_boxes=det_boxes.astype(np.float32),
        det_classes=np.rint(detected[fs.DETECTION_CLASSES].reshape(-1)[:count]).astype(np.int64),
        det_scores=detected[fs.DETECTION_SCORES].reshape(-1)[:count].astype(np.float32),
        image_id=_source_id(features),
    )


def _source_id(features: Mapping[str, Any]) -> str:
    """The image id, or "" if the examples lack it (then ties keep arrival order)."""
    if fs.IMAGE_SOURCE_ID not in features:
        return ""
    value = _lookup(features, fs.IMAGE_SOURCE_ID, "feature").reshape(-1)[0]
    return value.decode() if isinstance(value, bytes) else str(value)


class _ImagePreprocessor(metric_types.Preprocessor):
    """Reduces an example's extracts to a compact ImageData once, before slicing copies it."""

    def __init__(self, model_name: str):
        super().__init__(name=f"coco_image_{model_name}")
        self._model_name = model_name

    def process(self, extracts: dict[str, Any]) -> Iterator[cocoeval.ImageData]:
        extracts = util.StandardExtracts(extracts)
        yield image_data(extracts.get_features(), extracts.get_predictions(self._model_name))


class _CocoCombiner(beam.CombineFn):
    """Collects a slice's images and runs cocoeval on them once, in extract_output."""

    def __init__(self, class_names: Sequence[str], name: str, model_name: str, min_images: int):
        self._class_names = list(class_names)
        self._name = name
        self._model_name = model_name
        self._min_images = min_images

    def _key(self, name: str) -> metric_types.MetricKey:
        # TFMA builds the keys of MetricsSpec-level thresholds (how slice_mAP is gated)
        # with example_weighted None, and keys only match if that agrees.
        weighted = None if name == SLICE_MAP else False
        return metric_types.MetricKey(
            name=name, model_name=self._model_name, example_weighted=weighted)

    def keys(self) -> list[metric_types.MetricKey]:
        names = [
            self._name, *STAT_NAMES, NUM_IMAGES, ENOUGH_IMAGES, SLICE_MAP, NUM_OBJECTS, DECE,
            *(f"{NUM_OBJECTS}_{size}" for size in SIZE_NAMES),
            RELIABILITY_COUNT, RELIABILITY_SCORE, RELIABILITY_PRECISION,
        ]
        for prefix in (CLASS_AP_PREFIX, CLASS_AP50_PREFIX, f"{NUM_OBJECTS}/", f"{DECE}/",
                       THRESHOLD_PREFIX, F1_PREFIX, PR50_PREFIX):
            names += [prefix + c for c in self._class_names]
        return [self._key(n) for n in names]

    def create_accumulator(self) -> list[cocoeval.ImageData]:
        return []

    def add_input(
        self, accumulator: list[cocoeval.ImageData], element: cocoeval.ImageData
    ) -> list[cocoeval.ImageData]:
        accumulator.append(element)
        return accumulator

    def merge_accumulators(
        self, accumulators: Iterable[list[cocoeval.ImageData]]
    ) -> list[cocoeval.ImageData]:
        return [image for accumulator in accumulators for image in accumulator]

    def extract_output(
        self, accumulator: list[cocoeval.ImageData]
    ) -> dict[metric_types.MetricKey, Any]:
        values = coco_metrics(accumulator, self._class_names, self._min_images)
        values[self._name] = values.pop(MAP)  # the configured name of the main key
        return {self._key(name): _plain(value) for name, value in values.items()}


def coco_metrics(images: Sequence[cocoeval.ImageData], class_names: Sequence[str],
                 min_images: int = DEFAULT_MIN_IMAGES,
                 cache: cocoeval.MatchCache | None = None) -> dict[str, Any]:
    """One slice's metric values by key name (``MAP``, STAT_NAMES, per class, calibration).

    The Evaluator's combiner and the offline evaluation of edge variants both call this,
    so a TFLite variant is scored by exactly the code that scores the SavedModel.
    ``cache``: one per model, shared by its slices, so each image is matched once.
    """
    # Beam merges in no fixed order; pycocotools visits images in id order, which
    # decides how exact score ties across images are ranked.
    ordered = sorted(images, key=lambda image: (len(image.image_id), image.image_id))
    per_class = cocoeval.match_images(ordered, len(class_names), cache)
    summary = cocoeval.evaluate(ordered, len(class_names), per_class)
    calibrated = calibration.calibrate(per_class)
    enough = len(ordered) >= min_images
    values: dict[str, Any] = dict(zip((MAP, *STAT_NAMES), summary.stats, strict=True))
    values.update({
        NUM_IMAGES: len(ordered),
        ENOUGH_IMAGES: int(enough),
        SLICE_MAP: summary.stats[0] if enough else 0.0,
        NUM_OBJECTS: summary.num_gt[:, cocoeval.ALL].sum(),
        DECE: calibrated.ece,
        RELIABILITY_COUNT: calibrated.bin_count,
        RELIABILITY_SCORE: calibrated.bin_score,
        RELIABILITY_PRECISION: calibrated.bin_precision,
    })
    for size, area in zip(SIZE_NAMES, (cocoeval.SMALL, cocoeval.MEDIUM, cocoeval.LARGE),
                          strict=True):
        values[f"{NUM_OBJECTS}_{size}"] = summary.num_gt[:, area].sum()
    for k, name in enumerate(class_names):
        values[f"{NUM_OBJECTS}/{name}"] = summary.num_gt[k, cocoeval.ALL]
        if calibrated.class_ece[k] > -1:
            values[f"{DECE}/{name}"] = calibrated.class_ece[k]
        if summary.class_ap[k] > -1:  # -1: no GT of this class in the slice
            values[CLASS_AP_PREFIX + name] = summary.class_ap[k]
            values[CLASS_AP50_PREFIX + name] = summary.class_ap50[k]
            values[THRESHOLD_PREFIX + name] = calibrated.class_threshold[k]
            values[F1_PREFIX + name] = calibrated.class_f1[k]
            values[PR50_PREFIX + name] = np.asarray(summary.class_pr50[k], np.float64)
    return values


def _plain(value: Any) -> Any:
    """Python floats for scalars (TFMA's writer and thresholds), float64 arrays for curves."""
    if isinstance(value, np.ndarray) and value.ndim:
        return value.astype(np.float64)
    return float(value)
