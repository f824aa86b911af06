"""Two versions' answers compared from request logs: ``sightline models compare V1 V2``.

Input: the server's ``PredictionLog`` TFRecords (``serving.request_log``), each record
one request with the version that answered, its role (``primary``, or ``shadow`` for a
mirrored copy), request id, route, latency, every image's SHA-256 and the detections.

Pairs (the same image answered by both versions):

- by request: a stable answer and its shadow copy on the canary share a request id (item
  ``i`` of one batch pairs with item ``i`` of the other). This is shadow mode.
- by image: otherwise, an image with the same SHA-256 answered by both (a client sending
  the same frame to stable and canary). Canary-routed traffic rarely repeats an image, so
  in canary mode agreement is usually not measured; the per-class score shift then
  compares the two versions' score distributions instead of matched detections.

Per pair: detections scoring at least ``min_score`` are matched by class and IoU >=
``iou`` (greedily, best overlap first, each detection used once, IoU as pycocotools'
``bbIou`` via ``components.coco_eval.cocoeval``). An image agrees when every detection of
either version has a match. Reported: the share of paired images that agree, per class
the mean score change of matched detections (canary - stable), counts, and latency per
version (p50/p95 of ``sightline:latency_ms``; a shadow copy's latency is queueing plus
inference, a primary's is arrival to answer).
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any

import numpy as np

from components.coco_eval.cocoeval import box_iou
from data import boxes as box_formats
from serving import log_reader

MATCH_IOU = 0.5
# A class's score shift is gated only with at least this many observations behind it
# (matched pairs, or detections of each version in canary mode): a mean of a handful of
# scores moves by more than any sensible tolerance by chance.
MIN_CLASS_OBSERVATIONS = 10
PRIMARY, SHADOW = log_reader.PRIMARY, log_reader.SHADOW


@dataclasses.dataclass
class Item:
    """One image of one logged request, with its detections (scores >= min_score)."""

    version: int
    role: str
    request_id: str
    index: int
    digest: str
    boxes: np.ndarray  # [n, 4] normalized yxyx (detection_boxes)
    scores: np.ndarray  # [n]
    classes: np.ndarray  # [n] int, 1-based


@dataclasses.dataclass
class Request:
    version: int
    role: str
    route: str
    latency_ms: float | None


@dataclasses.dataclass
class LogRead:
    """What was read from the log files, and what was left out."""

    files: list[str]
    items: list[Item] = dataclasses.field(default_factory=list)
    requests: list[Request] = dataclasses.field(default_factory=list)
    records: int = 0
    other_models: int = 0
    other_versions: int = 0
    unreadable: list[str] = dataclasses.field(default_factory=list)


def read_logs(files: list[str], model: str, versions: tuple[int, int],
              min_score: float) -> LogRead:
    """The items and requests of ``versions`` of ``model`` in ``files``."""
    read = LogRead(files)
    source = log_reader.LogRead(files)
    for logged in log_reader.read_requests(source):
        if logged.model != model:
            read.other_models += 1
            continue
        if logged.version not in versions:
            read.other_versions += 1
            continue
        read.requests.append(Request(logged.version, logged.role, logged.route,
                                     logged.latency_ms))
        read.items += [Item(logged.version, logged.role, logged.request_id, image.index,
                            image.digest, found.boxes, found.scores, found.classes)
                       for image in logged.images
                       for found in [image.detections.above(min_score)]]
    read.records, read.unreadable = source.records, source.unreadable
    return read


def match(a: Item, b: Item, iou: float = MATCH_IOU) -> list[tuple[int, int]]:
    """Pairs (i, j) of a's and b's detections: same class, IoU >= ``iou``, best first."""
    if not len(a.scores) or not len(b.scores):
        return []

    def xywh(boxes: np.ndarray) -> np.ndarray:  # box_iou's format; IoU ignores the scale
        return box_formats.convert(boxes, box_formats.YXYX, box_formats.COCO, height=1.0,
                                   width=1.0)

    overlaps = box_iou(xywh(a.boxes), xywh(b.boxes), np.zeros(len(b.scores), bool))
    overlaps = np.where(a.classes[:, None] == b.classes[None, :], overlaps, 0.0)
    pairs, used_a, used_b = [], set(), set()
    for flat in np.argsort(-overlaps, axis=None, kind="stable"):
        i, j = np.unravel_index(flat, overlaps.shape)
        if overlaps[i, j] < iou:
            break
        if i not in used_a and j not in used_b:
            pairs.append((int(i), int(j)))
            used_a.add(i)
            used_b.add(j)
    return pairs


def _pairs(items: list[Item], baseline: int, candidate: int
           ) -> tuple[list[tuple[Item, Item]], dict[str, int]]:
    base = [i for i in items if i.version == baseline]
    cand = [i for i in items if i.version == candidate]
    primaries = {(i.request_id, i.index): i for i in base if i.request_id}
    pairs, used_base, unpaired = [], set(), []
    for item in cand:
        partner = primaries.get((item.request_id, item.index)) if item.role == SHADOW else None
        if partner is not None:
            pairs.append((partner, item))
            used_base.add(id(partner))
        else:
            unpaired.append(item)
    by_request = len(pairs)
    by_digest: dict[str, collections.deque] = collections.defaultdict(collections.deque)
    for item in base:
        if id(item) not in used_base and item.digest:
            by_digest[item.digest].append(item)
    for item in unpaired:
        if by_digest.get(item.digest):
            pairs.append((by_digest[item.digest].popleft(), item))
    return pairs, {"request": by_request, "image": len(pairs) - by_request}


def latency_summary(values: list[float]) -> dict[str, Any]:
    """Count, p50, p95 and mean of latencies in ms (None each without values)."""
    if not values:
        return {"count": 0, "p50": None, "p95": None, "mean": None}
    array = np.asarray(values)
    return {"count": len(values), "p50": round(float(np.percentile(array, 50)), 3),
            "p95": round(float(np.percentile(array, 95)), 3),
            "mean": round(float(array.mean()), 3)}


def compare(read: LogRead, model: str, baseline: int, candidate: int,
            class_names: list[str], min_score: float, iou: float = MATCH_IOU
            ) -> dict[str, Any]:
    """The comparison report (JSON-able) of ``candidate`` against ``baseline``."""

    def name(label: int) -> str:
        return class_names[label - 1] if 0 < label <= len(class_names) else f"class {label}"

    pairs, pairs_by = _pairs(read.items, baseline, candidate)
    agreeing, matched, unmatched = _match_pairs(pairs, iou, name)
    scores: dict[tuple[str, int], list[float]] = collections.defaultdict(list)
    for item in read.items:
        for label, score in zip(item.classes, item.scores, strict=True):
            scores[(name(label), item.version)].append(float(score))
    classes = {cls: _class_row(scores[(cls, baseline)], scores[(cls, candidate)],
                               matched[cls], unmatched, cls, bool(pairs))
               for cls in sorted({c for c, _ in scores} | set(matched))}
    roles, latency = _requests(read.requests, baseline, candidate)
    base_p50, cand_p50 = latency[str(baseline)]["p50"], latency[str(candidate)]["p50"]
    shadow_ids = {(i.request_id) for a, i in pairs if i.role == SHADOW}
    return {
        "model": model,
        "baseline": str(baseline),
        "candidate": str(candidate),
        "mode": "shadow" if pairs_by["request"] else "canary",
        "min_score": min_score,
        "iou": iou,
        "requests": {
            "baseline": roles[(baseline, PRIMARY)] + roles[(baseline, SHADOW)],
            "candidate": roles[(candidate, PRIMARY)] + roles[(candidate, SHADOW)],
            "candidate_shadow": roles[(candidate, SHADOW)],
            "candidate_primary": roles[(candidate, PRIMARY)],
            "paired": len(shadow_ids),
        },
        "images_paired": len(pairs),
        "pairs_by": pairs_by,
        "images_agreeing": agreeing,
        "agreement": round(agreeing / len(pairs), 4) if pairs else None,
        "classes": classes,
        "latency_ms": latency,
        "latency_ratio": round(cand_p50 / base_p50, 3) if base_p50 and cand_p50 else None,
        "logs": {"files": read.files, "records": read.records,
                 "other_models": read.other_models, "other_versions": read.other_versions,
                 "unreadable": read.unreadable},
    }


def _match_pairs(pairs: list[tuple[Item, Item]], iou: float, name: Any
                 ) -> tuple[int, dict[str, list[float]], collections.Counter]:
    """Images agreeing, per class the score changes of matched detections, and the
    unmatched detections per (class, side)."""
    matched: dict[str, list[float]] = collections.defaultdict(list)
    unmatched: collections.Counter = collections.Counter()
    agreeing = 0
    for a, b in pairs:
        found = match(a, b, iou)
        if len(found) == len(a.scores) == len(b.scores):
            agreeing += 1
        for i, j in found:
            matched[name(a.classes[i])].append(float(b.scores[j] - a.scores[i]))
        for side, item, used in (("baseline", a, {i for i, _ in found}),
                                 ("candidate", b, {j for _, j in found})):
            for k in set(range(len(item.scores))) - used:
                unmatched[(name(item.classes[k]), side)] += 1
    return agreeing, matched, unmatched


def _mean(values: list[float]) -> float | None:
    return round(float(np.mean(values)), 4) if values else None


def _class_row(base_scores: list[float], cand_scores: list[float], matched: list[float],
               unmatched: collections.Counter, cls: str, paired: bool) -> dict[str, Any]:
    """One class's counts and score shift: over matched detections when images were
    paired, else between the two versions' score distributions."""
    row: dict[str, Any] = {
        "baseline_detections": len(base_scores), "candidate_detections": len(cand_scores),
        "baseline_mean_score": _mean(base_scores),
        "candidate_mean_score": _mean(cand_scores),
        "matched": len(matched),
        "unmatched_baseline": unmatched[(cls, "baseline")],
        "unmatched_candidate": unmatched[(cls, "candidate")],
    }
    if paired:
        row["score_shift"] = _mean(matched)
        row["shift_from"] = "matched detections"
        row["gated"] = len(matched) >= MIN_CLASS_OBSERVATIONS
    else:
        both = base_scores and cand_scores
        row["score_shift"] = round(row["candidate_mean_score"]
                                   - row["baseline_mean_score"], 4) if both else None
        row["shift_from"] = "score distributions (no paired images)"
        row["gated"] = min(len(base_scores), len(cand_scores)) >= MIN_CLASS_OBSERVATIONS
    return row


def _requests(requests: list[Request], baseline: int, candidate: int
              ) -> tuple[collections.Counter, dict[str, dict[str, Any]]]:
    """Requests per (version, role), and latency per version."""
    latencies: dict[int, list[float]] = collections.defaultdict(list)
    roles: collections.Counter = collections.Counter()
    for request in requests:
        roles[(request.version, request.role)] += 1
        if request.latency_ms is not None:
            latencies[request.version].append(request.latency_ms)
    return roles, {str(v): latency_summary(latencies[v]) for v in (baseline, candidate)}
