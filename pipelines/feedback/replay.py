"""Logged traffic re-run through a model version: ``sightline replay --logs DIR --model V``.

A release engineer checks a candidate on real traffic before it serves any. Each logged
request runs, as logged (same signature, same inputs, one request at a time), through the
version loaded the way the server loads it (``serving.backends.load_saved_model``), so
the preprocessing is the served one by construction. Its detections are compared with
the ones that were served:

- **identical**: every detection (boxes, scores, classes, count) equal bit for bit. The
  same version on the same bytes must give 100 %; anything less is non-determinism.
- **agreeing**: every detection scoring at least ``min_score`` on either side matched by
  class and IoU >= ``iou`` (``pipelines.registry.compare.match``, as ``models compare``).
- score deltas of matched detections (replayed - served), per class; unmatched counts.
- latency: the logged ``sightline:latency_ms`` against the replay's own per-request time
  (no batching, no queueing, a warmed-up model on this machine: compare shapes, not ms).

Requests whose images the server redacted (logs written without
``--request_log_include_images``) cannot be replayed: they are counted and reported, as
are requests the version rejects (e.g. a signature it does not have).
"""

from __future__ import annotations

import collections
import dataclasses
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from pipelines.feedback.models import ModelDir
from pipelines.registry import compare
from serving import backends, log_reader
from serving.errors import ServingError

WORST_IMAGES = 20  # disagreeing images listed in the report, most unmatched first


@dataclasses.dataclass
class _Tally:
    requests: int = 0
    replayed_requests: int = 0
    redacted_requests: int = 0
    redacted_images: int = 0
    failed: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    other_models: int = 0
    served_versions: collections.Counter = dataclasses.field(
        default_factory=collections.Counter)
    images: int = 0
    identical: int = 0
    agreeing: int = 0
    deltas: dict[str, list[float]] = dataclasses.field(
        default_factory=lambda: collections.defaultdict(list))
    unmatched: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    served_latency: list[float] = dataclasses.field(default_factory=list)
    replay_latency: list[float] = dataclasses.field(default_factory=list)
    worst: list[dict[str, Any]] = dataclasses.field(default_factory=list)


def load(model: ModelDir) -> backends.Servable:
    """The version as the server loads it, warmed up so the first request is not timed cold."""
    servable = backends.load_saved_model(model.path)
    backends.warmup(servable)
    return servable


def identical(a: log_reader.Detections, b: log_reader.Detections) -> bool:
    return (len(a.scores) == len(b.scores) and np.array_equal(a.boxes, b.boxes)
            and np.array_equal(a.scores, b.scores) and np.array_equal(a.classes, b.classes))


def _item(found: log_reader.Detections, min_score: float) -> compare.Item:
    kept = found.above(min_score)
    return compare.Item(0, "", "", 0, "", kept.boxes, kept.scores, kept.classes)


def replay(requests: Iterable[log_reader.LoggedRequest], servable: backends.Servable,
           model: ModelDir, min_score: float, iou: float = compare.MATCH_IOU,
           model_name: str | None = None,
           progress: Callable[[int], None] = lambda n: None) -> dict[str, Any]:
    """Replays ``requests`` (those of ``model_name`` if given) and returns the report."""
    tally = _Tally()
    for logged in requests:
        progress(1)
        if model_name is not None and logged.model != model_name:
            tally.other_models += 1
            continue
        tally.requests += 1
        tally.served_versions[str(logged.version)] += 1
        redacted = [image for image in logged.images if image.encoded is None]
        if redacted or not logged.images:
            tally.redacted_requests += 1
            tally.redacted_images += len(redacted)
            continue
        try:
            signature = servable.signature(logged.signature)
            signature.check_inputs(logged.inputs)
            start = time.perf_counter()
            outputs = signature.run(logged.inputs)
            elapsed = (time.perf_counter() - start) * 1000.0
        except ServingError as e:
            tally.failed[e.message] += 1
            continue
        tally.replayed_requests += 1
        tally.replay_latency.append(elapsed)
        if logged.latency_ms is not None:
            tally.served_latency.append(logged.latency_ms)
        for image, again in zip(logged.images, log_reader.detections_of(outputs), strict=True):
            _compare_image(tally, logged, image, again, model, min_score, iou)
    return _report(tally, model, min_score, iou)


def _compare_image(tally: _Tally, logged: log_reader.LoggedRequest,
                   image: log_reader.LoggedImage, again: log_reader.Detections,
                   model: ModelDir, min_score: float, iou: float) -> None:
    tally.images += 1
    served = image.detections
    if identical(served, again):
        tally.identical += 1
    a, b = _item(served, min_score), _item(again, min_score)
    pairs = compare.match(a, b, iou)
    for i, j in pairs:
        tally.deltas[model.label_name(a.classes[i])].append(float(b.scores[j] - a.scores[i]))
    lost = sorted(set(range(len(a.scores))) - {i for i, _ in pairs})
    new = sorted(set(range(len(b.scores))) - {j for _, j in pairs})
    for side, item, rows in (("served", a, lost), ("replayed", b, new)):
        for k in rows:
            tally.unmatched[(model.label_name(item.classes[k]), side)] += 1
    if not lost and not new:
        tally.agreeing += 1
        return
    tally.worst.append({
        "request_id": logged.request_id, "index": image.index, "digest": image.digest,
        "served_version": str(logged.version), "client_id": logged.client_id,
        "served": len(a.scores), "replayed": len(b.scores), "matched": len(pairs),
        "unmatched": len(lost) + len(new)})


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _report(tally: _Tally, model: ModelDir, min_score: float, iou: float) -> dict[str, Any]:
    classes = sorted(set(tally.deltas) | {c for c, _ in tally.unmatched})
    all_deltas = [d for values in tally.deltas.values() for d in values]
    return {
        "model": {"name": model.name, "path": model.path},
        "min_score": min_score,
        "iou": iou,
        "requests": {
            "read": tally.requests, "replayed": tally.replayed_requests,
            "not_replayable_redacted": tally.redacted_requests,
            "failed": dict(tally.failed), "other_models": tally.other_models,
            "served_by_version": dict(tally.served_versions)},
        "images": {"replayed": tally.images, "redacted": tally.redacted_images,
                   "identical": tally.identical, "agreeing": tally.agreeing},
        "identical_share": _share(tally.identical, tally.images),
        "agreement": _share(tally.agreeing, tally.images),
        "score_delta": {
            "matched": len(all_deltas),
            "mean": round(float(np.mean(all_deltas)), 5) if all_deltas else None,
            "mean_abs": round(float(np.mean(np.abs(all_deltas))), 5) if all_deltas else None,
            "max_abs": round(float(np.max(np.abs(all_deltas))), 5) if all_deltas else None},
        "classes": {cls: {"matched": len(tally.deltas[cls]),
                          "mean_score_delta": (round(float(np.mean(tally.deltas[cls])), 5)
                                               if tally.deltas[cls] else None),
                          "unmatched_served": tally.unmatched[(cls, "served")],
                          "unmatched_replayed": tally.unmatched[(cls, "replayed")]}
                    for cls in classes},
        "latency_ms": {"served": compare.latency_summary(tally.served_latency),
                       "replayed": compare.latency_summary(tally.replay_latency)},
        "worst_images": sorted(tally.worst, key=lambda w: -w["unmatched"])[:WORST_IMAGES],
    }


def gate(report: dict[str, Any], min_agreement: float) -> list[str]:
    """Why the candidate must not serve: too little agreement, or nothing to judge it on."""
    if not report["images"]["replayed"]:
        return ["no logged image could be replayed (serve with --request_log_include_images)"]
    if report["agreement"] < min_agreement:
        return [f"agreement {report['agreement']:.2%} is below {min_agreement:.2%} "
                f"({report['images']['agreeing']} of {report['images']['replayed']} images)"]
    return []
