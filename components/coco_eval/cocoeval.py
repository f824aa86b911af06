"""COCO box evaluation in numpy: pycocotools ``COCOeval`` with ``iouType='bbox'``, reproduced.

TFMA's COCO metrics only approximate COCOeval and run one Python matcher per class and IoU
threshold; this module computes the official numbers in one pass over the images. It follows
pycocotools 2.0 step by step (``evaluateImg``, ``accumulate``, ``summarize``), including its
quirks, so results agree with it to floating-point noise:

* detections are matched per image *and category*, best score first, keeping the
  ``maxDets[-1]`` (100) best per image and category; ``maxDets`` also counts per category;
* a detection takes the unmatched GT of highest IoU >= threshold (ties go to the later GT),
  preferring non-ignored GT; crowd GT (IoU = intersection / detection area) are ignored
  and never used up;
* GT outside an area range (by their annotation ``area``) are *ignored*, not removed;
  unmatched detections outside the range (by box area) are ignored too;
* precision is the 101-point interpolated precision, recall the final recall;
  settings without (non-ignored) GT are -1 and left out of every mean.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np

# pycocotools Params.setDetParams.
IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)
MAX_DETS = (1, 10, 100)
AREA_RANGES = ((0.0, 1e10), (0.0, 32.0**2), (32.0**2, 96.0**2), (96.0**2, 1e10))
ALL, SMALL, MEDIUM, LARGE = range(len(AREA_RANGES))
# evaluateImg caps the threshold like this so that an IoU of exactly 1 still matches at 1.0.
_MATCH_THRESHOLDS = np.minimum(IOU_THRESHOLDS, 1 - 1e-10)
_IOU_50, _IOU_75 = 0, 5  # indices of 0.5 and 0.75 in IOU_THRESHOLDS


class ImageData(NamedTuple):
    """Ground truth and detections of one image.

    Boxes are ``data.boxes.XYXY`` (normalized xmin, ymin, xmax, ymax); ``height`` and
    ``width`` turn them into pixels, the unit of COCO's IoU and area ranges. ``gt_areas``
    are annotation areas in pixels (what COCO's size ranges test); detection areas are
    their box areas, as ``COCO.loadRes`` sets them. Classes are 1-based.
    """

    height: float
    width: float
    gt_boxes: np.ndarray  # [G, 4]
    gt_classes: np.ndarray  # [G] int
    gt_areas: np.ndarray  # [G]
    gt_crowd: np.ndarray  # [G] bool
    det_boxes: np.ndarray  # [D, 4]
    det_classes: np.ndarray  # [D] int
    det_scores: np.ndarray  # [D]
    image_id: str = ""  # orders images like pycocotools, so score ties are reproducible


@dataclasses.dataclass(frozen=True)
class Summary:
    """COCOeval's results; -1 where pycocotools gives -1 (no GT to evaluate against)."""

    stats: np.ndarray  # [12], the order of COCOeval.stats (AP, AP50, ..., ARl)
    class_ap: np.ndarray  # [num_classes] AP@[.5:.95], area all, 100 detections
    class_ap50: np.ndarray  # [num_classes] AP@.5
    # [num_classes, 101] interpolated precision at RECALL_THRESHOLDS, IoU .5: the PR curve.
    class_pr50: np.ndarray
    num_gt: np.ndarray  # [num_classes, len(AREA_RANGES)] GT that count (not crowd, in range)


class Matches(NamedTuple):
    """evaluateImg's result for one image and category, for all area ranges at once."""

    scores: np.ndarray  # [D] sorted, best first
    matched: np.ndarray  # [A, T, D] bool
    ignored: np.ndarray  # [A, T, D] bool
    num_gt: np.ndarray  # [A] GT that are not ignored


def to_pixel_xywh(boxes: np.ndarray, height: float, width: float) -> np.ndarray:
    """Normalized corners -> COCO ``[x, y, w, h]`` pixels (the bbox format of COCO results)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    x, y = boxes[:, 0] * width, boxes[:, 1] * height
    w, h = (boxes[:, 2] - boxes[:, 0]) * width, (boxes[:, 3] - boxes[:, 1]) * height
    return np.stack([x, y, w, h], axis=1)


def box_iou(dets: np.ndarray, gts: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """[D, G] IoU of ``[x, y, w, h]`` boxes, as pycocotools' ``bbIou``.

    For a crowd GT the union is the detection's area, so a detection inside a crowd region
    overlaps it fully whatever the region's size.
    """
    dx, dy, dw, dh = (dets[:, i, None] for i in range(4))
    gx, gy, gw, gh = (gts[None, :, i] for i in range(4))
    w = np.minimum(dx + dw, gx + gw) - np.maximum(dx, gx)
    h = np.minimum(dy + dh, gy + gh) - np.maximum(dy, gy)
    inter = np.where((w > 0) & (h > 0), w * h, 0.0)
    det_area, gt_area = dw * dh, gw * gh
    union = np.where(crowd[None, :], det_area, det_area + gt_area - inter)
    return np.divide(inter, union, out=np.zeros_like(inter), where=inter > 0)


def _last_argmax(mask: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Index of the largest ``values`` where ``mask`` along the last axis; ties -> last.

    evaluateImg replaces its best match on ``iou >= best``, so equal IoUs go to the later GT.
    """
    masked = np.where(mask, values, -np.inf)
    return mask.shape[-1] - 1 - np.argmax(masked[..., ::-1], axis=-1)


def _match(ious: np.ndarray, gt_ignore: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """evaluateImg's greedy matching for every area range and IoU threshold at once.

    Args:
      ious: [D, G], detections sorted best score first.
      gt_ignore: [A, G] GT ignored in each area range (crowd, or area outside the range).
      crowd: [G] crowd GT, which stay available after a match.

    Returns:
      [A, T, D] index of the GT each detection matched, -1 if none.
    """
    num_dets, num_gt = ious.shape
    shape = (len(AREA_RANGES), len(IOU_THRESHOLDS))
    taken = np.zeros(shape + (num_gt,), bool)
    match = np.full(shape + (num_dets,), -1)
    regular, ignored = ~gt_ignore[:, None, :], gt_ignore[:, None, :]
    # Only detections that reach the lowest threshold with some GT can match at all.
    for d in np.flatnonzero(ious.max(axis=1, initial=0.0) >= _MATCH_THRESHOLDS[0]):
        ok = (ious[d] >= _MATCH_THRESHOLDS[:, None]) & (~taken | crowd)
        # Non-ignored GT first: evaluateImg sorts ignored GT last and stops there once matched.
        pick = np.where(
            (ok & regular).any(-1), _last_argmax(ok & regular, ious[d]),
            _last_argmax(ok & ignored, ious[d]),
        )
        area, thr = np.nonzero(ok.any(-1))
        match[area, thr, d] = pick[area, thr]
        taken[area, thr, pick[area, thr]] = True
    return match


def _area_ignore(areas: np.ndarray) -> np.ndarray:
    """[A, N] whether each area falls outside each range (bounds inclusive, as pycocotools)."""
    lo, hi = np.array(AREA_RANGES).T
    return (areas[None, :] < lo[:, None]) | (areas[None, :] > hi[:, None])


def _evaluate_category(
    gt_xywh: np.ndarray, gt_areas: np.ndarray, crowd: np.ndarray,
    det_xywh: np.ndarray, scores: np.ndarray,
) -> Matches:
    """evaluateImg for one image and category (``gt_*``/``det_*`` of that category only)."""
    order = np.argsort(-scores, kind="mergesort")[: MAX_DETS[-1]]
    det_xywh, scores = det_xywh[order], scores[order]
    gt_ignore = crowd[None, :] | _area_ignore(gt_areas)
    match = _match(box_iou(det_xywh, gt_xywh, crowd), gt_ignore, crowd)
    matched = match >= 0
    # A matched detection inherits its GT's ignore flag (match -1 reads the padding column).
    area_index = np.arange(len(AREA_RANGES))[:, None, None]
    match_ignored = np.pad(gt_ignore, ((0, 0), (0, 1)))[area_index, match]
    det_outside = _area_ignore(det_xywh[:, 2] * det_xywh[:, 3])[:, None, :]
    ignored = np.where(matched, match_ignored, det_outside)
    return Matches(scores, matched, ignored, np.sum(~gt_ignore, axis=1))


def _evaluate_image(image: ImageData, num_classes: int) -> Iterator[tuple[int, Matches]]:
    """(class, matches) for each class 1..num_classes with GT or detections in the image.

    Detections of other classes are dropped, as COCOeval drops categories not in the GT.
    """
    gt_xywh = to_pixel_xywh(image.gt_boxes, image.height, image.width)
    det_xywh = to_pixel_xywh(image.det_boxes, image.height, image.width)
    gt_classes = np.asarray(image.gt_classes).reshape(-1)
    det_classes = np.asarray(image.det_classes).reshape(-1)
    gt_areas = np.asarray(image.gt_areas, np.float64).reshape(-1)
    crowd = np.asarray(image.gt_crowd, bool).reshape(-1)
    scores = np.asarray(image.det_scores, np.float64).reshape(-1)
    for cls in np.unique(np.concatenate([gt_classes, det_classes])):
        if not 1 <= cls <= num_classes:
            continue
        g, d = gt_classes == cls, det_classes == cls
        matches = _evaluate_category(gt_xywh[g], gt_areas[g], crowd[g], det_xywh[d], scores[d])
        yield int(cls), matches


def _interpolated_precision(tp: np.ndarray, fp: np.ndarray, num_gt: int) -> np.ndarray:
    """[T, R] 101-point precision from [T, N] cumulative TP/FP counts, as accumulate."""
    recall = tp / num_gt
    precision = tp / (fp + tp + np.spacing(1))
    # Precision envelope: the best precision at this recall or any higher one.
    precision = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
    result = np.zeros((len(tp), len(RECALL_THRESHOLDS)))
    for t in range(len(tp)):
        index = np.searchsorted(recall[t], RECALL_THRESHOLDS, side="left")
        valid = index < tp.shape[1]
        result[t, valid] = precision[t, index[valid]]
    return result


def _accumulate_category(entries: Sequence[Matches]) -> tuple[np.ndarray, np.ndarray]:
    """accumulate for one category: precision [T, R, A, M] and recall [T, A, M], -1 if no GT.

    Entries are in image order; pycocotools' stable sort then breaks score ties by image.
    """
    num_t, num_a, num_m = len(IOU_THRESHOLDS), len(AREA_RANGES), len(MAX_DETS)
    precision = -np.ones((num_t, len(RECALL_THRESHOLDS), num_a, num_m))
    recall = -np.ones((num_t, num_a, num_m))
    if not entries:
        return precision, recall
    scores = np.concatenate([e.scores for e in entries])
    rank = np.concatenate([np.arange(len(e.scores)) for e in entries])
    matched = np.concatenate([e.matched for e in entries], axis=-1)
    ignored = np.concatenate([e.ignored for e in entries], axis=-1)
    num_gt = np.sum([e.num_gt for e in entries], axis=0)
    for m, max_dets in enumerate(MAX_DETS):
        keep = np.flatnonzero(rank < max_dets)
        keep = keep[np.argsort(-scores[keep], kind="mergesort")]
        counted = ~ignored[..., keep]
        tp = np.cumsum(matched[..., keep] & counted, axis=-1, dtype=np.float64)
        fp = np.cumsum(~matched[..., keep] & counted, axis=-1, dtype=np.float64)
        for a in np.flatnonzero(num_gt):
            recall[:, a, m] = tp[a, :, -1] / num_gt[a] if len(keep) else 0.0
            precision[:, :, a, m] = _interpolated_precision(tp[a], fp[a], num_gt[a])
    return precision, recall


def _mean_defined(values: np.ndarray) -> float:
    """Mean over entries > -1, or -1 if none (COCOeval.summarize)."""
    defined = values[values > -1]
    return float(defined.mean()) if defined.size else -1.0


def _summarize(precision: np.ndarray, recall: np.ndarray, num_gt: np.ndarray) -> Summary:
    """COCOeval._summarizeDets from precision [T, R, K, A, M] and recall [T, K, A, M]."""
    last = len(MAX_DETS) - 1
    ap = precision[..., last]
    stats = [
        _mean_defined(ap[:, :, :, ALL]),
        _mean_defined(ap[_IOU_50, :, :, ALL]),
        _mean_defined(ap[_IOU_75, :, :, ALL]),
        *(_mean_defined(ap[:, :, :, a]) for a in (SMALL, MEDIUM, LARGE)),
        *(_mean_defined(recall[:, :, ALL, m]) for m in range(len(MAX_DETS))),
        *(_mean_defined(recall[:, :, a, last]) for a in (SMALL, MEDIUM, LARGE)),
    ]
    num_classes = precision.shape[2]
    return Summary(
        stats=np.array(stats),
        class_ap=np.array([_mean_defined(ap[:, :, k, ALL]) for k in range(num_classes)]),
        class_ap50=np.array([_mean_defined(ap[_IOU_50, :, k, ALL]) for k in range(num_classes)]),
        class_pr50=ap[_IOU_50, :, :, ALL].T,
        num_gt=num_gt,
    )


class MatchCache:
    """evaluateImg results per image, for scoring the same images in several slices.

    Matching depends on the image alone, and is ~90 % of scoring a slice: with one cache
    for "overall" and every slice of a model, each image is matched once. Keyed by the
    ImageData object (held, so its id is never reused), not by ``image_id``, which may
    be empty.
    """

    def __init__(self) -> None:
        self._matches: dict[int, tuple[ImageData, list[tuple[int, Matches]]]] = {}

    def get(self, image: ImageData, num_classes: int) -> list[tuple[int, Matches]]:
        """(class, matches) of ``image`` as ``match_images`` uses them, computed once."""
        if id(image) not in self._matches:
            self._matches[id(image)] = (image, list(_evaluate_image(image, num_classes)))
        return self._matches[id(image)][1]


def match_images(images: Sequence[ImageData], num_classes: int,
                 cache: MatchCache | None = None) -> list[list[Matches]]:
    """evaluateImg for every image: per class (index class - 1), its images' Matches in order.

    The shared first step of ``evaluate`` and of calibration (``calibration.py``).
    ``cache``: reuse (and keep) the matches of images seen before.
    """
    per_class: list[list[Matches]] = [[] for _ in range(num_classes)]
    for image in images:
        pairs = (cache.get(image, num_classes) if cache is not None
                 else _evaluate_image(image, num_classes))
        for cls, matches in pairs:
            per_class[cls - 1].append(matches)
    return per_class


def evaluate(
    images: Sequence[ImageData], num_classes: int,
    per_class: Sequence[Sequence[Matches]] | None = None,
) -> Summary:
    """COCOeval (bbox) over ``images`` for classes 1..num_classes: evaluate, accumulate, summarize.

    A class without GT in ``images`` gets -1, like a pycocotools category without GT.
    ``per_class``: ``match_images(images, num_classes)`` if the caller already has it.
    """
    if per_class is None:
        per_class = match_images(images, num_classes)
    accumulated = [_accumulate_category(entries) for entries in per_class]
    precision = np.stack([p for p, _ in accumulated], axis=2)
    recall = np.stack([r for _, r in accumulated], axis=1)
    num_gt = np.array([np.sum([e.num_gt for e in entries], axis=0) if entries
                       else np.zeros(len(AREA_RANGES), int) for entries in per_class])
    return _summarize(precision, recall, num_gt.reshape(num_classes, len(AREA_RANGES)))
