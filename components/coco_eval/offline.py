"""Scores any detector on a split's tf.Examples with the Evaluator's metric and slices.

The Evaluator (TFMA) scores the SavedModel; models TFMA cannot run the same way (the
TFLite variants) are scored here, by the same ``coco_metrics`` on the same slices:
overall, and one slice per value of each slicing feature (named like TFMA's,
``meta/camera=cam-a``). Slices with too few images carry ``enough_images`` 0.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from components.coco_eval import results
from components.coco_eval.cocoeval import MatchCache
from components.coco_eval.metric import DEFAULT_MIN_IMAGES, coco_metrics, image_data
from data import feature_spec as fs
from trainer.export import SERVING_DEFAULT

# A batch of encoded images (JPEG/PNG bytes) -> the detector's outputs, batch-first.
DetectFn = Callable[[Sequence[bytes]], Mapping[str, np.ndarray]]
# A batch of preprocessed images [B, S, S, 3] -> the detector's outputs, batch-first.
ImageDetectFn = Callable[[np.ndarray], Mapping[str, np.ndarray]]
BATCH_SIZE = 32


def read_examples(patterns: Sequence[str]) -> Iterator[bytes]:
    """Serialized tf.Examples of a TFX split (GZIP TFRecords), in file order."""
    files = sorted(f for p in patterns for f in tf.io.gfile.glob(p))
    if not files:
        raise FileNotFoundError(f"No TFRecord files match {list(patterns)}")
    yield from tf.data.TFRecordDataset(files, compression_type="GZIP").as_numpy_iterator()


def example_features(serialized: bytes) -> dict[str, np.ndarray]:
    """A tf.Example as {key: 1-D array of its values} (what ``image_data`` reads)."""
    example = tf.train.Example.FromString(serialized)
    return {key: np.asarray(getattr(feature, feature.WhichOneof("kind")).value)
            for key, feature in example.features.feature.items()}


def _batches(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def evaluate(detect: DetectFn, examples: Iterable[bytes], class_names: Sequence[str],
             slice_keys: Sequence[str] = fs.META_KEYS, min_images: int = DEFAULT_MIN_IMAGES,
             batch_size: int = BATCH_SIZE) -> dict[str, dict[str, Any]]:
    """Runs ``detect`` on every example's image and scores each slice.

    Returns:
      {slice name: {metric key: value}}, "overall" first; arrays (PR curves, reliability
      bins) as lists so the result is JSON-ready.
    """
    return evaluate_models(examples, class_names, slice_keys, min_images,
                           detectors={"model": detect}, batch_size=batch_size)["model"]


def evaluate_models(examples: Iterable[bytes], class_names: Sequence[str],
                    slice_keys: Sequence[str] = fs.META_KEYS,
                    min_images: int = DEFAULT_MIN_IMAGES, *,
                    detectors: Mapping[str, DetectFn] | None = None,
                    image_detectors: Mapping[str, ImageDetectFn] | None = None,
                    preprocess: Callable[[bytes], np.ndarray] | None = None,
                    batch_size: int = BATCH_SIZE) -> dict[str, dict[str, dict[str, Any]]]:
    """``evaluate`` for several models in one pass over ``examples``.

    Each batch is read and parsed once for every model, and its images decoded and
    preprocessed once (``preprocess``) for every ``image_detectors`` model: what scoring
    the models one by one repeats. Only a batch of images is held at a time. The
    metrics are those ``evaluate`` gives each model alone.

    Args:
      detectors: models taking a batch of encoded images (``DetectFn``).
      image_detectors: models taking a batch of ``preprocess``-ed images.
    Returns:
      {model name: {slice name: {metric key: value}}} in the order given.
    """
    detectors, image_detectors = detectors or {}, image_detectors or {}
    if image_detectors and preprocess is None:
        raise ValueError("image_detectors need preprocess (encoded bytes -> model input)")
    names = [*detectors, *image_detectors]
    slices: dict[str, dict[str, list]] = {name: defaultdict(list) for name in names}
    for batch in _batches(examples, batch_size):
        features = [example_features(s) for s in batch]
        encoded = [f[fs.IMAGE_ENCODED][0] for f in features]
        outputs = {name: detect(encoded) for name, detect in detectors.items()}
        if image_detectors:
            images = np.stack([preprocess(e) for e in encoded])
            outputs.update({name: detect(images) for name, detect in image_detectors.items()})
        for name in names:
            _add_to_slices(features, outputs[name], slice_keys, slices[name])
    if not names or not slices[names[0]]:
        raise ValueError("evaluate() got no examples" if names else "no models to evaluate")
    return {name: _score_slices(slices[name], class_names, min_images) for name in names}


def _add_to_slices(features: Sequence[Mapping[str, np.ndarray]],
                   outputs: Mapping[str, np.ndarray], slice_keys: Sequence[str],
                   slices: dict[str, list]) -> None:
    for i, feature in enumerate(features):
        image = image_data(feature, {k: v[i] for k, v in outputs.items()})
        slices[results.OVERALL].append(image)
        for key in slice_keys:
            for value in feature.get(key, ()):
                text = value.decode() if isinstance(value, bytes) else value
                slices[f"{key}={text}"].append(image)


def _score_slices(slices: Mapping[str, list], class_names: Sequence[str],
                  min_images: int) -> dict[str, dict[str, Any]]:
    """{slice: metrics}, "overall" first; one MatchCache: each image is matched once."""
    cache = MatchCache()
    names = [results.OVERALL, *sorted(n for n in slices if n != results.OVERALL)]
    return {name: {k: (v.tolist() if isinstance(v, np.ndarray) else float(v))
                   for k, v in coco_metrics(slices[name], class_names, min_images,
                                            cache).items()}
            for name in names}


def saved_model_detector(serving_dir: str) -> DetectFn:
    """The SavedModel's ``serving_default`` (image bytes in) as a DetectFn."""
    serve = tf.saved_model.load(serving_dir).signatures[SERVING_DEFAULT]
    return lambda encoded: {k: v.numpy() for k, v in serve(images=tf.constant(encoded)).items()}
