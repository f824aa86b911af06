"""tf.data pipeline: GZIP TFRecords of Sightline tf.Examples -> (images, CenterNet targets).

Images go through ``preprocess.preprocess_image``, the function every export signature
also uses. Training augmentation works on the preprocessed square image and moves the
boxes with it; all randomness is stateless, seeded by (config seed, element index), so
two runs with the same seed see exactly the same batches.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from data import feature_spec as fs
from trainer.config import TrainConfig
from trainer.model import OUTPUT_STRIDE
from trainer.preprocess import preprocess_image
from trainer.targets import encode_targets

# Random zoom: the crop window side as a fraction of the image (> 1 zooms out). Kept
# mild: with a ~700-step budget the model underfits, and (0.6, 1.4) cost a third of mAP.
SCALE_RANGE = (0.85, 1.15)
# A box cropped to less than this fraction of its area is dropped (mostly off-image).
MIN_VISIBLE_FRACTION = 0.3
FILL_VALUE = 0.5  # grey where zooming out leaves no pixels
SHUFFLE_BUFFER = 2048
REPEAT_SHUFFLE_BUFFER = 128


def list_files(patterns: list[str]) -> list[str]:
    """Expands TFX's split globs (``<uri>/Split-train/*``); fails loudly if nothing matches."""
    files = sorted(f for p in patterns for f in tf.io.gfile.glob(p))
    if not files:
        raise FileNotFoundError(f"No TFRecord files match {patterns}")
    return files


def count_examples(patterns: list[str]) -> int:
    """Number of records, so steps per epoch (and the LR schedule) follow the data."""
    records = tf.data.TFRecordDataset(list_files(patterns), compression_type="GZIP")
    return int(records.reduce(tf.constant(0, tf.int64), lambda n, _: n + 1))


def class_repeat_factors(patterns: list[str], num_classes: int, threshold: float) -> np.ndarray:
    """[num_classes + 1] repeat factor per class id: max(1, sqrt(threshold / f_c)).

    ``f_c`` is the share of images holding class c (index 0, no class, stays 1). Reads only
    the labels, so it costs a pass over the records, not over the decoded images.
    """
    spec = {fs.CLASS_LABEL: tf.io.VarLenFeature(tf.int64)}
    records = tf.data.TFRecordDataset(list_files(patterns), compression_type="GZIP")
    labels = records.map(lambda s: tf.sparse.to_dense(tf.io.parse_single_example(s, spec)[
        fs.CLASS_LABEL]))
    images_with = np.zeros(num_classes + 1)
    num_images = 0
    for classes in labels.as_numpy_iterator():
        images_with[np.unique(classes)] += 1
        num_images += 1
    share = images_with / max(num_images, 1)
    factors = np.sqrt(threshold / np.maximum(share, 1e-12))
    factors[share == 0] = 1.0  # a class that never occurs cannot be repeated
    factors = np.maximum(factors, 1.0)
    factors[0] = 1.0
    return factors


def _repeat_by_rarest_class(ds: tf.data.Dataset, factors: np.ndarray, seed: int
                            ) -> tf.data.Dataset:
    """Each (index, example) k times, k = floor(r) or ceil(r) (stochastic rounding), where
    r is the largest factor among the example's classes; stateless, so runs repeat."""
    table = tf.constant(factors, tf.float32)

    def copies(index: tf.Tensor, example: tuple[tf.Tensor, ...]) -> tf.data.Dataset:
        rate = tf.reduce_max(tf.concat([[1.0], tf.gather(table, example[2])], axis=0))
        draw = tf.random.stateless_uniform([], seed=tf.stack([tf.cast(seed, tf.int64), index]))
        times = tf.floor(rate) + tf.cast(draw < rate - tf.floor(rate), tf.float32)
        return tf.data.Dataset.from_tensors(example).repeat(tf.cast(times, tf.int64))

    return ds.enumerate().flat_map(copies)


def records_in_id_order(patterns: list[str]) -> tf.data.Dataset:
    """A split's serialized examples in image-id order, whatever order its files hold.

    A multi-worker ExampleGen spreads a split over shards in a run-dependent order, and the
    seeded shuffle starts from the input order, so without this the same data and seed
    trained a different model on every pipeline run. Ids sort by length, then as strings:
    numerically for COCO's integer ids. Holds the encoded records in memory, less than
    the decoded-image cache that follows.
    """
    records = list(tf.data.TFRecordDataset(list_files(patterns), compression_type="GZIP")
                   .as_numpy_iterator())
    ids = tf.io.parse_example(records, {fs.IMAGE_SOURCE_ID: fs.parsing_spec()[
        fs.IMAGE_SOURCE_ID]})[fs.IMAGE_SOURCE_ID].numpy() if records else []
    order = sorted(range(len(records)), key=lambda i: (len(ids[i]), ids[i], records[i]))
    return tf.data.Dataset.from_generator(lambda: (records[i] for i in order),
                                          output_signature=tf.TensorSpec((), tf.string))


def parse_example(serialized: tf.Tensor, input_size: int) -> tuple[tf.Tensor, ...]:
    """One serialized tf.Example -> (image [S, S, 3], boxes [N, 4], classes [N])."""
    parsed = tf.io.parse_single_example(serialized, fs.parsing_spec())
    image = preprocess_image(parsed[fs.IMAGE_ENCODED], input_size)
    boxes = tf.stack([tf.sparse.to_dense(parsed[k]) for k in fs.BOX_KEYS], axis=1)
    classes = tf.sparse.to_dense(parsed[fs.CLASS_LABEL])
    return image, tf.reshape(boxes, (-1, 4)), classes


def _flip(image: tf.Tensor, boxes: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    flip = tf.random.stateless_uniform((), seed) < 0.5
    ymin, xmin, ymax, xmax = tf.unstack(boxes, axis=1)
    flipped = tf.stack([ymin, 1.0 - xmax, ymax, 1.0 - xmin], axis=1)
    return (tf.where(flip, tf.image.flip_left_right(image), image),
            tf.where(flip, flipped, boxes))


def _zoom(image: tf.Tensor, boxes: tf.Tensor, classes: tf.Tensor,
          seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Random square crop (zoom in) or padded window (zoom out), resized back to S x S."""
    size = image.shape[0]
    seeds = tf.random.experimental.stateless_split(seed, 3)
    side = tf.random.stateless_uniform((), seeds[0], *SCALE_RANGE)
    lo, hi = tf.minimum(0.0, 1.0 - side), tf.maximum(0.0, 1.0 - side)
    y0 = tf.random.stateless_uniform((), seeds[1], lo, hi)
    x0 = tf.random.stateless_uniform((), seeds[2], lo, hi)
    # crop_and_resize samples at box * (S - 1) in pixel-index space; this shifts the window
    # so output pixel centres land exactly on the window's area coordinates (no drift).
    y1 = (y0 * size + side / 2 - 0.5) / (size - 1)
    x1 = (x0 * size + side / 2 - 0.5) / (size - 1)
    window = tf.stack([y1, x1, y1 + side, x1 + side])[None]
    image = tf.image.crop_and_resize(image[None], window, [0], (size, size),
                                     extrapolation_value=FILL_VALUE)[0]
    moved = (boxes - tf.stack([y0, x0, y0, x0])) / side
    clipped = tf.clip_by_value(moved, 0.0, 1.0)

    def area(b: tf.Tensor) -> tf.Tensor:
        return (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])

    keep = area(clipped) > MIN_VISIBLE_FRACTION * tf.maximum(area(moved), 1e-12)
    return image, tf.boolean_mask(clipped, keep), tf.boolean_mask(classes, keep)


def _colour(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    seeds = tf.random.experimental.stateless_split(seed, 3)
    image = tf.image.stateless_random_brightness(image, 0.1, seeds[0])
    image = tf.image.stateless_random_contrast(image, 0.8, 1.2, seeds[1])
    image = tf.image.stateless_random_saturation(image, 0.8, 1.2, seeds[2])
    return tf.clip_by_value(image, 0.0, 1.0)


def augment(image: tf.Tensor, boxes: tf.Tensor, classes: tf.Tensor,
            seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Flip, zoom/crop and colour jitter; boxes (normalized yxyx) follow the pixels.

    Args:
      seed: int [2] stateless seed; equal seeds give equal outputs.
    """
    seeds = tf.random.experimental.stateless_split(seed, 3)
    image, boxes = _flip(image, boxes, seeds[0])
    image, boxes, classes = _zoom(image, boxes, classes, seeds[1])
    return _colour(image, seeds[2]), boxes, classes


def make_dataset(patterns: list[str], config: TrainConfig, training: bool) -> tf.data.Dataset:
    """Batched (images, targets) for ``fit``/``evaluate``.

    Training data is shuffled, augmented, repeated forever (``fit`` counts steps) and
    batched with ``drop_remainder`` so every replica gets a static, equal batch. Decoded
    images are cached in memory: decoding dominated the input cost on 2 cores.
    """
    grid = config.input_size // OUTPUT_STRIDE
    if training:
        ds = records_in_id_order(patterns)
    else:
        ds = tf.data.TFRecordDataset(list_files(patterns), compression_type="GZIP")
    ds = ds.map(lambda s: parse_example(s, config.input_size), tf.data.AUTOTUNE).cache()
    if training:
        ds = ds.shuffle(SHUFFLE_BUFFER, seed=config.seed, reshuffle_each_iteration=True)
        ds = ds.repeat()
        if config.repeat_factor_threshold > 0:
            factors = class_repeat_factors(patterns, config.num_classes,
                                           config.repeat_factor_threshold)
            ds = _repeat_by_rarest_class(ds, factors, config.seed)
            # Copies of one image would sit side by side: spread them over a few batches.
            ds = ds.shuffle(REPEAT_SHUFFLE_BUFFER, seed=config.seed)
        ds = ds.enumerate()
        ds = ds.map(
            lambda i, x: augment(*x, seed=tf.stack([tf.cast(config.seed, tf.int64), i])),
            tf.data.AUTOTUNE,
        )

    def to_targets(image: tf.Tensor, boxes: tf.Tensor, classes: tf.Tensor):
        return image, encode_targets(boxes, classes, grid, config.num_classes)

    ds = ds.map(to_targets, tf.data.AUTOTUNE)
    ds = ds.batch(config.batch_size, drop_remainder=training).prefetch(tf.data.AUTOTUNE)
    # Shard by element: the default (FILE) policy needs at least one file per worker,
    # and a split is often a single TFRecord file.
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options)
