"""``CocoDetectionMetrics``: official COCO box metrics as one TFMA metric, per slice and model.

TFMA's built-in COCO metrics approximate COCOeval and expand into one Python matcher per
class and IoU threshold (minutes on a few hundred images). This metric instead reduces each
example to its boxes (a preprocessor, run once per example before slicing), collects them
per slice in a Beam ``CombineFn`` and runs ``cocoeval`` once per slice in ``extract_output``.

Configure it like any TFMA metric::

    tfma.MetricConfig(class_name="CocoDetectionMetrics", module="components.coco_eval.metric",
                      config=json.dumps({"class_names": ["circle", "square", ...]}))

Ground truth comes from the example's features (``data.feature_spec`` keys), detections from
the model's named outputs ``detections`` ([K, 6] normalized xmin, ymin, xmax, ymax, class,
score) and ``num_detections`` (rows of ``detections`` that are real). Thresholds set on the
MetricConfig gate the AP@[.5:.95] key (``name``, "mAP" by default).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import apache_beam as beam
import numpy as np
from tensorflow_model_analysis.metrics import metric_types
from tensorflow_model_analysis.utils import util

from components.coco_eval import cocoeval
from data import feature_spec as fs

MAP = "mAP"
DETECTIONS_KEY = "detections"
NUM_DETECTIONS_KEY = "num_detections"
# Keys of cocoeval.Summary.stats[1:] (pycocotools' stats order); stats[0] is ``name``.
STAT_NAMES = (
    "mAP50", "mAP75", "mAP_small", "mAP_medium", "mAP_large",
    "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large",
)
CLASS_AP_PREFIX = "AP/"
CLASS_AP50_PREFIX = "AP50/"
_BOX_KEYS = (fs.BBOX_XMIN, fs.BBOX_YMIN, fs.BBOX_XMAX, fs.BBOX_YMAX)
_DETECTION_COLUMNS = 6  # xmin, ymin, xmax, ymax, class, score


class CocoDetectionMetrics(metric_types.Metric):
    """COCOeval (bbox) numbers: mAP, mAP50, ..., AR_large and AP/<class>, AP50/<class>.

    Summary numbers are -1 where pycocotools gives -1 (no GT in that area range or slice);
    per-class keys are omitted for classes without (non-crowd) GT in the slice.
    """

    def __init__(
        self,
        class_names: Sequence[str],
        name: str = MAP,
        detections_key: str = DETECTIONS_KEY,
        num_detections_key: str = NUM_DETECTIONS_KEY,
    ):
        """Args:
        class_names: label i+1 is class_names[i]; names the per-class keys.
        name: key of AP@[.5:.95], the number thresholds on this MetricConfig gate.
        detections_key / num_detections_key: the model outputs holding the detections.
        """
        super().__init__(
            _coco_computations,
            class_names=list(class_names),
            name=name,
            detections_key=detections_key,
            num_detections_key=num_detections_key,
        )


def _coco_computations(
    class_names: Sequence[str],
    name: str = MAP,
    detections_key: str = DETECTIONS_KEY,
    num_detections_key: str = NUM_DETECTIONS_KEY,
    model_names: Sequence[str] | None = None,
) -> metric_types.MetricComputations:
    """One computation per model (candidate and baseline each get their own keys)."""
    computations = []
    for model_name in model_names or [""]:
        combiner = _CocoCombiner(class_names, name, model_name)
        preprocessor = _ImagePreprocessor(model_name, detections_key, num_detections_key)
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


def image_data(
    features: Mapping[str, Any] | None,
    outputs: Mapping[str, Any] | None,
    detections_key: str = DETECTIONS_KEY,
    num_detections_key: str = NUM_DETECTIONS_KEY,
) -> cocoeval.ImageData:
    """One example's GT (from its features) and detections (from the model outputs).

    Raises:
      KeyError: a feature or model output is missing; the message names it.
      ValueError: the per-object features disagree in length.
    """
    if not isinstance(features, Mapping):
        raise KeyError(f"CocoDetectionMetrics needs the example's features, got {features!r}")
    if not isinstance(outputs, Mapping):
        raise KeyError(
            f"CocoDetectionMetrics needs named model outputs '{detections_key}' and "
            f"'{num_detections_key}', got {type(outputs).__name__}"
        )
    boxes = np.stack([_lookup(features, k, "feature").reshape(-1) for k in _BOX_KEYS], axis=1)
    per_object = {k: _lookup(features, k, "feature").reshape(-1)
                  for k in (fs.CLASS_LABEL, fs.AREA, fs.IS_CROWD)}
    if any(len(v) != len(boxes) for v in per_object.values()):
        sizes = {k: len(v) for k, v in per_object.items()}
        raise ValueError(f"{len(boxes)} boxes but per-object feature lengths {sizes}")
    num_detections = int(_scalar(outputs, num_detections_key, "model output"))
    detections = _lookup(outputs, detections_key, "model output")
    detections = detections.reshape(-1, _DETECTION_COLUMNS)[:num_detections]
    return cocoeval.ImageData(
        height=_scalar(features, fs.IMAGE_HEIGHT, "feature"),
        width=_scalar(features, fs.IMAGE_WIDTH, "feature"),
        gt_boxes=boxes.astype(np.float32),
        gt_classes=per_object[fs.CLASS_LABEL].astype(np.int64),
        gt_areas=per_object[fs.AREA].astype(np.float32),
        gt_crowd=per_object[fs.IS_CROWD].astype(bool),
        det_boxes=detections[:, :4].astype(np.float32),
        det_classes=np.rint(detections[:, 4]).astype(np.int64),
        det_scores=detections[:, 5].astype(np.float32),
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

    def __init__(self, model_name: str, detections_key: str, num_detections_key: str):
        super().__init__(name=f"coco_image_{model_name}_{detections_key}_{num_detections_key}")
        self._model_name = model_name
        self._detections_key = detections_key
        self._num_detections_key = num_detections_key

    def process(self, extracts: dict[str, Any]) -> Iterator[cocoeval.ImageData]:
        extracts = util.StandardExtracts(extracts)
        yield image_data(
            extracts.get_features(),
            extracts.get_predictions(self._model_name),
            self._detections_key,
            self._num_detections_key,
        )


class _CocoCombiner(beam.CombineFn):
    """Collects a slice's images and runs cocoeval on them once, in extract_output."""

    def __init__(self, class_names: Sequence[str], name: str, model_name: str):
        self._num_classes = len(class_names)
        self._stat_keys = [
            metric_types.MetricKey(name=n, model_name=model_name) for n in (name, *STAT_NAMES)
        ]
        self._class_keys = [
            (metric_types.MetricKey(name=CLASS_AP_PREFIX + c, model_name=model_name),
             metric_types.MetricKey(name=CLASS_AP50_PREFIX + c, model_name=model_name))
            for c in class_names
        ]

    def keys(self) -> list[metric_types.MetricKey]:
        return self._stat_keys + [key for pair in self._class_keys for key in pair]

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
    ) -> dict[metric_types.MetricKey, float]:
        # Beam merges in no fixed order; pycocotools visits images in id order, which
        # decides how exact score ties across images are ranked.
        ordered = sorted(accumulator, key=lambda image: (len(image.image_id), image.image_id))
        summary = cocoeval.evaluate(ordered, self._num_classes)
        result = {key: float(v) for key, v in zip(self._stat_keys, summary.stats, strict=True)}
        for (ap_key, ap50_key), ap, ap50 in zip(
            self._class_keys, summary.class_ap, summary.class_ap50, strict=True
        ):
            if ap > -1:  # -1: no GT of this class in the slice
                result[ap_key], result[ap50_key] = float(ap), float(ap50)
        return result
