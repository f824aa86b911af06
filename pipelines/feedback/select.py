"""Active learning: which logged images to label next (``sightline select``).

Each logged image that carries its bytes (each SHA-256 once) is scored on three terms,
each in [0, 1]:

- **uncertainty**: the detector's doubt. A served score ``s`` of class ``c`` is mapped
  so that the class's max-F1 threshold ``t`` lands on 0.5 (``p = s ** (ln .5 / ln t)``);
  the image's uncertainty is the largest binary entropy of ``p`` over its detections.
  A detection right at its threshold is the one a labeller settles most cheaply.
- **disagreement**: where shadow logs pair the image with another version's answer
  (same request id and position), the share of detections either version has that the
  other does not match (class and IoU, ``pipelines.registry.compare.match``).
- **novelty**: how much more of this kind of image the model now serves than it was
  trained on: around the image's vector (``embeddings``: scene features plus brightness
  and contrast), the logs' share of the density against the TRAINING images in the index
  (``log_density_share``), rank-normalized. New traffic (a new camera) and
  over-represented traffic (night scenes) both score high. Images, not crops: a drifted
  scene changes every crop, and an image without detections has no crop to compare.

Picks are greedy on ``weights . terms`` with a redundancy penalty (the similarity of an
image's crop vector to those already picked) so a burst of near-identical frames is not
labelled ten times. Before the free picks, two kinds of quota are met. Each is a target
count: the group's share of the pool (what random picks would give it) plus its reserve,
so a quota always adds to what random selection gives; an image can count for several.

- **slices**: a ``meta/*`` value whose share of the logged images is at least
  ``slice_min_ratio`` times its share of the training images (or absent from training)
  is drifted traffic; ``slice_quota_share`` of the budget is split across such slices by
  their excess share. The drift check flags such a shift; this labels it.
- **classes**: ``class_quota_share`` of the budget split across the detected classes by
  inverse frequency, rarest first, so rare classes are not drowned by the common ones.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from pipelines.feedback import index as crop_index
from pipelines.feedback.embeddings import WHOLE_IMAGE, Embedder, image_vector
from pipelines.feedback.models import ModelDir
from pipelines.registry import compare
from pipelines.settings import FeedbackSettings
from serving import log_reader


@dataclasses.dataclass
class Candidate:
    image: log_reader.LoggedImage
    request_id: str
    version: int
    classes: set[str]  # classes detected at or above their thresholds
    uncertainty: float = 0.0
    uncertain_detection: str = ""
    disagreement: float | None = None  # None: no other version answered this image
    novelty: float = 0.0
    vector: np.ndarray | None = None
    score: float = 0.0
    reasons: list[str] = dataclasses.field(default_factory=list)


def _entropy(p: float) -> float:
    p = min(max(p, 1e-9), 1 - 1e-9)
    return -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


def uncertainty(found: log_reader.Detections, model: ModelDir, settings: FeedbackSettings
                ) -> tuple[float, str]:
    """The image's largest threshold-centred entropy, and which detection gave it."""
    best, why = 0.0, ""
    for score, label in zip(found.scores, found.classes, strict=True):
        if score < settings.min_score:
            continue
        t = min(max(model.threshold(int(label), settings.default_threshold), 1e-3), 1 - 1e-3)
        h = _entropy(float(score) ** (math.log(0.5) / math.log(t)))
        if h > best:
            best, why = h, f"{model.label_name(int(label))} {score:.2f} vs threshold {t:.2f}"
    return best, why


def _item(found: log_reader.Detections, min_score: float) -> compare.Item:
    kept = found.above(min_score)
    return compare.Item(0, "", "", 0, "", kept.boxes, kept.scores, kept.classes)


def candidates(requests: Iterable[log_reader.LoggedRequest], model: ModelDir,
               settings: FeedbackSettings) -> tuple[list[Candidate], dict[str, int]]:
    """One candidate per logged image with bytes; counts of what was left out and why."""
    by_digest: dict[str, Candidate] = {}
    answers: dict[tuple[str, int], list[tuple[str, log_reader.Detections]]] = {}
    skipped = {"redacted_images": 0, "repeated_images": 0}
    for logged in requests:
        for image in logged.images:
            if logged.request_id:
                answers.setdefault((logged.request_id, image.index), []).append(
                    (logged.role, image.detections))
            if logged.role == log_reader.SHADOW:
                continue  # the primary's copy is the candidate; the shadow's is its partner
            if image.encoded is None:
                skipped["redacted_images"] += 1
                continue
            if image.digest in by_digest:
                skipped["repeated_images"] += 1
                continue
            kept = crop_index.served_boxes(image, model, settings.default_threshold)
            found, why = uncertainty(image.detections, model, settings)
            by_digest[image.digest] = Candidate(
                image, logged.request_id, logged.version,
                {model.label_name(int(c)) for c in kept.classes}, found, why)
    for candidate in by_digest.values():
        pair = answers.get((candidate.request_id, candidate.image.index), [])
        if len(pair) == 2:
            a, b = (_item(found, settings.disagreement_min_score) for _, found in pair)
            matched = len(compare.match(a, b))
            total = len(a.scores) + len(b.scores)
            candidate.disagreement = 1 - 2 * matched / total if total else 0.0
    return list(by_digest.values()), skipped


def embed(pool: list[Candidate], embedder: Embedder, index: crop_index.CropIndex,
          model: ModelDir, settings: FeedbackSettings,
          progress: Callable[[int], None] = lambda n: None) -> None:
    """Sets each candidate's crop vector (for redundancy) and its novelty
    (``log_density_share`` of its image vector)."""
    images = []
    for start in range(0, len(pool), 32):
        chunk = pool[start:start + 32]
        boxes = []
        for c in chunk:
            kept = crop_index.served_boxes(c.image, model, settings.default_threshold).boxes
            boxes.append(kept if len(kept) else WHOLE_IMAGE)
        embedded = embedder.embed([c.image.encoded for c in chunk], boxes)
        images.append(embedded.images)
        for candidate, crops in zip(chunk, embedded.crops, strict=True):
            candidate.vector = image_vector(crops)
        progress(len(chunk))
    if pool:
        shares = log_density_share(np.concatenate(images), index, settings.novelty_neighbours)
        for candidate, share in zip(pool, shares, strict=True):
            candidate.novelty = float(share)


def log_density_share(logged: np.ndarray, index: crop_index.CropIndex, k: int) -> np.ndarray:
    """Per logged image vector, the logs' share of the density around it:
    ``p_logs / (p_logs + p_train)`` estimated from its ``k`` nearest neighbours among the
    training images (the index) and the other logged images, each set weighted by
    1 / its size. 0.5 where traffic looks like training in proportion; towards 1 where it
    is new (no training image near) or over-represented (night is 15 % of training and
    40 % of traffic): both are what the model has learnt least about, relative to what it
    now serves. A nearest-distance score misses the second: a night frame has a close
    training twin, just too few of them."""
    import faiss

    trained = index.size(crop_index.TRAIN_IMAGES)
    if not trained:
        return np.ones(len(logged))
    own = faiss.IndexFlatL2(logged.shape[1])
    own.add(np.ascontiguousarray(logged, np.float32))
    near_logs, _ = own.search(np.ascontiguousarray(logged, np.float32),
                              min(k + 1, len(logged)))
    near_logs = near_logs[:, 1:]  # itself first
    near_train = np.array([[d for d, _ in hits] for hits in
                           index.search(crop_index.TRAIN_IMAGES, logged, min(k, trained))])
    distances = np.concatenate([near_logs, near_train], axis=1)
    weights = np.concatenate([np.full(near_logs.shape, 1.0 / max(len(logged) - 1, 1)),
                              np.full(near_train.shape, 1.0 / trained)], axis=1)
    nearest = np.argsort(distances, axis=1, kind="stable")[:, :k]
    kept = np.take_along_axis(weights, nearest, axis=1)
    from_logs = nearest < near_logs.shape[1]  # columns before the training ones
    return (kept * from_logs).sum(axis=1) / kept.sum(axis=1)


def _ranks(values: list[float]) -> np.ndarray:
    """Values as rank percentiles in [0, 1]: novelty's raw scale depends on the model."""
    if len(values) < 2:
        return np.ones(len(values))
    order = np.argsort(np.argsort(values, kind="stable"), kind="stable")
    return order / (len(values) - 1)


def select(pool: list[Candidate], budget: int, settings: FeedbackSettings,
           training_meta: list[dict[str, str]] | None = None) -> list[Candidate]:
    """``budget`` candidates: slice quotas (``training_meta``: the training images'
    ``meta/*``, from the index), then class quotas (rarest first), then the best of the
    rest; each pick penalized by its similarity to those already picked."""
    novelty = _ranks([c.novelty for c in pool])
    for c, n in zip(pool, novelty, strict=True):
        c.score = (settings.uncertainty_weight * c.uncertainty
                   + settings.disagreement_weight * (c.disagreement or 0.0)
                   + settings.novelty_weight * float(n))
    budget = min(budget, len(pool))
    chosen: list[Candidate] = []
    groups: list[tuple[int, Callable[[Candidate], bool], str]] = []
    for (key, value), (quota, log_share, train_share) in drifted_slices(
            [c.image.meta for c in pool], training_meta or [], settings,
            int(budget * settings.slice_quota_share)).items():
        groups.append((quota, lambda c, k=key, v=value: c.image.meta.get(k) == v,
                       f"drifted slice: {key}={value} ({log_share:.0%} of logged images, "
                       f"{train_share:.0%} of training images)"))
    counts: dict[str, int] = {}
    for c in pool:
        for cls in c.classes:
            counts[cls] = counts.get(cls, 0) + 1
    for cls, quota in quotas(counts, int(budget * settings.class_quota_share)).items():
        groups.append((quota, lambda c, k=cls: k in c.classes,
                       f"class quota: {cls} ({counts[cls]} logged images with it)"))
    for quota, member, reason in groups:
        # A quota is on top of the group's share of the pool (what random picks would give).
        target = quota + round(budget * sum(map(member, pool)) / len(pool))
        while sum(map(member, chosen)) < target and len(chosen) < budget:
            if not _pick(pool, chosen, settings, member, reason):
                break
    while len(chosen) < budget:
        _pick(pool, chosen, settings, lambda c: True, "")
    return chosen


def _largest_remainder(weights: dict[Any, float], reserved: int) -> dict[Any, int]:
    """``reserved`` whole picks split in proportion to ``weights`` (largest remainder)."""
    total = sum(weights.values())
    if not weights or reserved <= 0 or total <= 0:
        return {}
    exact = {k: reserved * w / total for k, w in weights.items()}
    shares = {k: int(v) for k, v in exact.items()}
    for k in sorted(exact, key=lambda k: (shares[k] - exact[k], -weights[k], str(k)))[
            :reserved - sum(shares.values())]:
        shares[k] += 1
    return {k: n for k, n in shares.items() if n}


def quotas(counts: dict[str, int], reserved: int) -> dict[str, int]:
    """``reserved`` picks split across classes by inverse frequency (largest remainder),
    rarest first: a class in 1 of 10 images gets 10x the quota of one in every image."""
    shares = _largest_remainder({k: 1.0 / n for k, n in counts.items() if n}, reserved)
    return dict(sorted(shares.items(), key=lambda kv: (counts[kv[0]], kv[0])))


def drifted_slices(logged_meta: list[dict[str, str]], training_meta: list[dict[str, str]],
                   settings: FeedbackSettings, reserved: int
                   ) -> dict[tuple[str, str], tuple[int, float, float]]:
    """Meta slices over-represented in the logs vs training: (field, value) -> (quota,
    share of logged images, share of training images), largest excess first. Quotas
    split ``reserved`` by excess share; without training meta there is nothing to
    compare with, so no slice gets one."""
    if not logged_meta or not training_meta:
        return {}

    def shares(metas: list[dict[str, str]]) -> dict[tuple[str, str], float]:
        counts: dict[tuple[str, str], int] = {}
        for meta in metas:
            for item in meta.items():
                if item[1]:
                    counts[item] = counts.get(item, 0) + 1
        return {k: n / len(metas) for k, n in counts.items()}

    logged, trained = shares(logged_meta), shares(training_meta)
    excess = {k: share - trained.get(k, 0.0) for k, share in logged.items()
              if share >= settings.slice_min_ratio * trained.get(k, 0.0)
              and share > trained.get(k, 0.0)}
    split = _largest_remainder(excess, reserved)
    return {k: (split[k], logged[k], trained.get(k, 0.0))
            for k in sorted(split, key=lambda k: -excess[k])}


def _pick(pool: list[Candidate], chosen: list[Candidate], settings: FeedbackSettings,
          eligible: Callable[[Candidate], bool], quota_reason: str) -> bool:
    taken = {id(c) for c in chosen}
    picked = np.array([c.vector for c in chosen if c.vector is not None])
    best, best_value, best_overlap = None, -np.inf, 0.0
    for c in pool:
        if id(c) in taken or not eligible(c):
            continue
        overlap = float(np.max(picked @ c.vector)) if len(picked) and c.vector is not None \
            else 0.0
        value = c.score - settings.redundancy_weight * max(overlap, 0.0)
        if value > best_value:
            best, best_value, best_overlap = c, value, overlap
    if best is None:
        return False
    best.reasons = _reasons(best, quota_reason, best_overlap)
    chosen.append(best)
    return True


def _reasons(c: Candidate, quota_reason: str, overlap: float) -> list[str]:
    reasons = [quota_reason] if quota_reason else []
    if c.uncertainty >= 0.5:
        reasons.append(f"uncertain: {c.uncertain_detection} (entropy {c.uncertainty:.2f})")
    if c.disagreement:
        reasons.append(f"versions disagree on {c.disagreement:.0%} of detections")
    reasons.append(f"novelty {c.novelty:.3f} (the logs' share of the density around it; "
                   "0.5: as common as in training)")
    reasons.append(f"score {c.score:.3f}, similarity to earlier picks {overlap:.2f}")
    return reasons


def row(c: Candidate, rank: int, file_name: str) -> dict[str, Any]:
    """The sidecar's record of one pick."""
    return {"rank": rank, "file_name": file_name, "sha256": c.image.digest,
            "request_id": c.request_id, "served_version": c.version,
            "classes": sorted(c.classes), "score": round(c.score, 4),
            "uncertainty": round(c.uncertainty, 4),
            "disagreement": None if c.disagreement is None else round(c.disagreement, 4),
            "novelty": round(c.novelty, 4), "meta": c.image.meta,
            "reasons": c.reasons}


def write_coco(chosen: list[Candidate], out_dir: str, model: ModelDir,
               settings: FeedbackSettings) -> tuple[str, list[dict[str, Any]]]:
    """``annotations.json`` (the picks, their served detections as pre-annotations, their
    ``meta/*`` as image attributes) and ``images/``; returns its path and the sidecar rows.

    The pre-annotations are the model's guesses for a labelling tool to correct: a batch
    must be reviewed before it becomes a span, or the model trains on its own mistakes.
    """
    import io
    import json
    import os

    from PIL import Image

    from data import boxes as box_formats

    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    images, annotations, rows = [], [], []
    for rank, c in enumerate(chosen, 1):
        with Image.open(io.BytesIO(c.image.encoded)) as decoded:
            width, height, fmt = decoded.width, decoded.height, decoded.format
        file_name = f"images/{c.image.digest[:16]}.{'png' if fmt == 'PNG' else 'jpg'}"
        with open(os.path.join(out_dir, file_name), "wb") as f:
            f.write(c.image.encoded)
        record = row(c, rank, file_name)
        rows.append(record)
        images.append({"id": rank, "file_name": file_name, "width": width, "height": height,
                       **c.image.meta, "sightline_selection": record})
        kept = crop_index.served_boxes(c.image, model, settings.default_threshold)
        # Served boxes may overhang the image (decode does not clip); ingestion quarantines
        # a box more than a pixel outside it, so clip, and drop what clipping empties.
        clipped = np.clip(kept.boxes, 0.0, 1.0)
        inside = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
        pixels = box_formats.convert(clipped[inside], box_formats.YXYX, box_formats.COCO,
                                     height=height, width=width)
        for bbox, score, label in zip(pixels, kept.scores[inside], kept.classes[inside],
                                      strict=True):
            annotations.append({"id": len(annotations) + 1, "image_id": rank,
                                "category_id": int(label),
                                "bbox": [round(float(v), 2) for v in bbox],
                                "area": round(float(bbox[2] * bbox[3]), 2), "iscrowd": 0,
                                "score": round(float(score), 4)})
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(model.class_names)]
    path = os.path.join(out_dir, "annotations.json")
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories,
                   "info": {"description": f"selected for labelling by sightline select, "
                                           f"pre-annotated by model {model.name}"}}, f, indent=1)
    return path, rows
