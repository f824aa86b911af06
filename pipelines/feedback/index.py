"""The crop-embedding index: training crops (ground truth) and logged crops (served
detections), searchable by cosine similarity with FAISS, and the training images' own
vectors (``select``'s novelty: how far a logged image is from everything trained on).

Two exact inner-product indexes (``faiss.IndexFlatIP``: vectors are L2-normalized, so
inner product is cosine), one per source, so a query can ask for the nearest training
crops and the nearest logged crops separately. Exact search costs ~1 ms per query per
100k crops of 80 dims on one core (``benchmarks/retrieval_bench.py``), well within a CLI's
budget at this project's scale; an IVF index is the upgrade past a few million crops.

The image vectors (``embeddings``: scene features + brightness/contrast, not unit norm)
sit in a third, Euclidean index (``faiss.IndexFlatL2``), one per training image with or
without objects.

On disk (``sightline index``, default ``<home>/feedback/index``): ``index.json`` (model,
embedding variant, dims, counts, sources), and per source ``<source>.faiss`` with
``<source>.jsonl``, one line per vector in index order: image id (a training image's
``image/source_id``, a logged image's SHA-256) and meta, and for a crop its box
(normalized yxyx), label, class, score (None for ground truth), and for a logged crop the
request id and version.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from pipelines.feedback.embeddings import Embedder
from pipelines.feedback.models import ModelDir
from serving import log_reader

TRAIN, LOGS = "train", "logs"
SOURCES = (TRAIN, LOGS)  # crop sources
TRAIN_IMAGES = "train_images"
MANIFEST = "index.json"
# What an image yields to the index: its bytes, its boxes [n, 4], one record per box and
# a record of the image (id, meta).
Crops = tuple[bytes, np.ndarray, list[dict[str, Any]], dict[str, Any]]


class CropIndex:
    """Crop vectors per source, training image vectors, and their records."""

    def __init__(self, dim: int, image_dim: int, manifest: dict[str, Any]):
        import faiss

        self.dim, self.image_dim = dim, image_dim
        self.manifest = manifest
        self.indexes = {s: faiss.IndexFlatIP(dim) for s in SOURCES}
        self.indexes[TRAIN_IMAGES] = faiss.IndexFlatL2(image_dim)
        self.crops: dict[str, list[dict[str, Any]]] = {s: [] for s in self.indexes}

    def add(self, source: str, vectors: np.ndarray, crops: list[dict[str, Any]]) -> None:
        if len(vectors) != len(crops):
            raise ValueError(f"{len(vectors)} vectors for {len(crops)} crops")
        if len(vectors):
            self.indexes[source].add(np.ascontiguousarray(vectors, np.float32))
            self.crops[source] += crops

    def size(self, source: str) -> int:
        return self.indexes[source].ntotal

    def search(self, source: str, vectors: np.ndarray, k: int
               ) -> list[list[tuple[float, dict[str, Any]]]]:
        """Per query vector, up to ``k`` (cosine similarity, or squared distance for
        ``TRAIN_IMAGES``; record), nearest first."""
        if not self.size(source) or not len(vectors):
            return [[] for _ in range(len(vectors))]
        sims, ids = self.indexes[source].search(np.ascontiguousarray(vectors, np.float32),
                                                min(k, self.size(source)))
        return [[(float(s), self.crops[source][i]) for s, i in zip(row_s, row_i, strict=True)
                 if i >= 0] for row_s, row_i in zip(sims, ids, strict=True)]

    def save(self, directory: str) -> str:
        import faiss

        os.makedirs(directory, exist_ok=True)
        for source in self.indexes:
            faiss.write_index(self.indexes[source], os.path.join(directory, f"{source}.faiss"))
            with open(os.path.join(directory, f"{source}.jsonl"), "w") as f:
                f.writelines(json.dumps(c, sort_keys=True) + "\n" for c in self.crops[source])
        manifest = {**self.manifest, "dim": self.dim, "image_dim": self.image_dim,
                    "counts": {s: self.size(s) for s in self.indexes}}
        path = os.path.join(directory, MANIFEST)
        with open(path, "w") as f:  # last: a folder with a manifest is a complete index
            json.dump(manifest, f, indent=2, sort_keys=True)
        return path

    @classmethod
    def load(cls, directory: str) -> CropIndex:
        """The index in ``directory``; FileNotFoundError naming it (and how to build one)."""
        import faiss

        path = os.path.join(directory, MANIFEST)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no crop index at {directory} (build one with "
                                    "`sightline index --model V`)")
        with open(path) as f:
            manifest = json.load(f)
        if "image_dim" not in manifest:
            raise ValueError(f"{directory}: an index from an older sightline (no training "
                             "image vectors); rebuild it with `sightline index --model V`")
        index = cls(int(manifest["dim"]), int(manifest["image_dim"]), manifest)
        for source in index.indexes:
            index.indexes[source] = faiss.read_index(os.path.join(directory, f"{source}.faiss"))
            with open(os.path.join(directory, f"{source}.jsonl")) as f:
                index.crops[source] = [json.loads(line) for line in f]
            if len(index.crops[source]) != index.size(source):
                raise ValueError(f"{directory}: {source}.jsonl has {len(index.crops[source])} "
                                 f"records for {index.size(source)} vectors; rebuild it")
        return index


def example_crops(serialized: Iterable[bytes]) -> Iterator[Crops]:
    """Ground-truth crops of tf.Examples (the pipeline's training split)."""
    from components.coco_eval.offline import example_features
    from data import feature_spec as fs

    for record in serialized:
        features = example_features(record)
        boxes = np.stack([features.get(k, np.zeros(0)) for k in
                          (fs.BBOX_YMIN, fs.BBOX_XMIN, fs.BBOX_YMAX, fs.BBOX_XMAX)], -1)
        image = features[fs.IMAGE_SOURCE_ID][0].decode()
        meta = {k[len(fs.META_PREFIX):]: v[0].decode() for k, v in features.items()
                if k.startswith(fs.META_PREFIX) and len(v)}
        texts = [t.decode() for t in features.get(fs.CLASS_TEXT, [])]
        crops = [{"image": image, "box": [round(float(v), 5) for v in box],
                  "label": int(label), "class": text, "score": None, "meta": meta}
                 for box, label, text in zip(boxes, features.get(fs.CLASS_LABEL, []), texts,
                                             strict=True)]
        yield features[fs.IMAGE_ENCODED][0], boxes, crops, {"image": image, "meta": meta}


def served_boxes(image: log_reader.LoggedImage, model: ModelDir,
                 default_threshold: float) -> log_reader.Detections:
    """A logged image's served detections at or above their class's threshold."""
    found = image.detections
    keep = np.array([s >= model.threshold(int(c), default_threshold)
                     for s, c in zip(found.scores, found.classes, strict=True)], bool)
    return log_reader.Detections(found.boxes[keep], found.scores[keep], found.classes[keep])


def log_crops(requests: Iterable[log_reader.LoggedRequest], model: ModelDir,
              default_threshold: float) -> Iterator[Crops]:
    """Served detections of logged images that carry their bytes, each image once."""
    seen: set[str] = set()
    for logged in requests:
        for image in logged.images:
            if image.encoded is None or image.digest in seen:
                continue
            seen.add(image.digest)
            kept = served_boxes(image, model, default_threshold)
            crops = [{"image": image.digest, "box": [round(float(v), 5) for v in box],
                      "label": int(c), "class": model.label_name(int(c)),
                      "score": round(float(s), 4), "request_id": logged.request_id,
                      "version": logged.version, "meta": image.meta}
                     for box, s, c in zip(kept.boxes, kept.scores, kept.classes, strict=True)]
            yield image.encoded, kept.boxes, crops, {"image": image.digest, "meta": image.meta}


def build(embedder: Embedder, model: ModelDir, sources: dict[str, Iterable[Crops]],
          manifest: dict[str, Any], progress: Callable[[int], None] = lambda n: None,
          batch: int = 64) -> CropIndex:
    """Embeds every source's crops (and the training images) into a new index."""
    index = CropIndex(embedder.dim, embedder.image_dim,
                      {**manifest, "model": {"name": model.name, "path": model.path},
                       "variant": embedder.variant,
                       "parts": [list(p) for p in embedder.parts], "built_at": time.time(),
                       "class_names": list(model.class_names)})
    for source, items in sources.items():
        pending: list[Crops] = []
        for item in items:
            if len(item[2]) or source == TRAIN:  # every training image has a vector
                pending.append(item)
            if len(pending) == batch:
                _add(index, embedder, source, pending, progress)
                pending = []
        _add(index, embedder, source, pending, progress)
    return index


def _add(index: CropIndex, embedder: Embedder, source: str, items: Sequence[Crops],
         progress: Callable[[int], None]) -> None:
    if not items:
        return
    embedded = embedder.embed([i[0] for i in items], [i[1] for i in items])
    index.add(source, np.concatenate(embedded.crops), [c for i in items for c in i[2]])
    if source == TRAIN:
        index.add(TRAIN_IMAGES, embedded.images, [i[3] for i in items])
    progress(len(items))


def training_split(store, version: str, split: str = "train") -> list[str]:
    """File patterns of ``split`` of the Examples a pushed version was trained on (its
    lineage in ML Metadata)."""
    from pipelines.reports import runs

    examples = runs.lineage(store, version)["examples"]
    if not examples:
        raise LookupError(f"version {version}: no Examples in its lineage")
    return [os.path.join(examples[-1]["uri"], f"Split-{split}", "*")]
