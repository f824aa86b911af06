"""Input pipeline: parsing, box-aligned augmentation, determinism, batches."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from data import feature_spec as fs
from tests.trainer_fixture import CLASS_NAMES, make_example
from trainer.config import TrainConfig
from trainer.input import augment, class_repeat_factors, make_dataset, parse_example
from trainer.model import HEATMAP
from trainer.preprocess import preprocess_image
from trainer.targets import MASK
from trainer.tflite import representative_images

SIZE = 64


def rectangle_image(box: tuple[float, float, float, float]) -> np.ndarray:
    """A white filled rectangle (normalized yxyx, on pixel edges) on black, [SIZE, SIZE, 3]."""
    image = np.zeros((SIZE, SIZE, 3), np.float32)
    y0, x0, y1, x1 = (round(v * SIZE) for v in box)
    image[y0:y1, x0:x1] = 1.0
    return image


@pytest.mark.parametrize("seed", range(12))
def test_augmented_box_still_frames_the_rectangle(seed):
    box = (0.25, 0.125, 0.625, 0.5)
    image, boxes, classes = augment(tf.constant(rectangle_image(box)), tf.constant([box]),
                                    tf.constant([1], tf.int64), seed=tf.constant([7, seed]))
    image = image.numpy().mean(-1)
    if boxes.shape[0] == 0:  # zoomed so far that the object left the frame: nothing to check
        return
    assert classes.numpy().tolist() == [1]
    # The white pixels' extent, in normalized edges, must match the moved box within ~1 px.
    # After jitter the rectangle is still >= 0.4 brighter than the grey zoom-out fill.
    ys, xs = np.nonzero(image > image.max() - 0.2)
    found = (ys.min() / SIZE, xs.min() / SIZE, (ys.max() + 1) / SIZE, (xs.max() + 1) / SIZE)
    np.testing.assert_allclose(found, boxes.numpy()[0], atol=1.5 / SIZE)


def test_augmentation_is_deterministic_per_seed():
    box = tf.constant([[0.2, 0.2, 0.6, 0.7]])
    image = tf.random.stateless_uniform((SIZE, SIZE, 3), (1, 2))
    classes = tf.constant([1], tf.int64)
    first, second, other = (augment(image, box, classes, tf.constant(s))
                            for s in ([1, 2], [1, 2], [1, 3]))
    np.testing.assert_array_equal(first[0].numpy(), second[0].numpy())
    assert not np.array_equal(first[0].numpy(), other[0].numpy())


def _example(index: int, labels: tuple[int, ...] = (2,)) -> tf.train.Example:
    pixels = np.zeros((80, 100, 3), np.uint8)
    pixels[20:60, 10:50] = 255
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return fs.build_example(encoded=buffer.getvalue(), image_format="png", height=80,
                            width=100, source_id=str(index),
                            boxes=[(0.25, 0.1, 0.75, 0.5)] * len(labels), labels=list(labels),
                            texts=["ab"[label - 1] for label in labels])


def test_parse_uses_the_shared_preprocessing():
    example = _example(0)
    image, boxes, classes = parse_example(tf.constant(example.SerializeToString()), SIZE)
    encoded = example.features.feature[fs.IMAGE_ENCODED].bytes_list.value[0]
    np.testing.assert_array_equal(image.numpy(), preprocess_image(tf.constant(encoded), SIZE))
    np.testing.assert_allclose(boxes.numpy(), [[0.25, 0.1, 0.75, 0.5]])
    assert classes.numpy().tolist() == [2]


def _write(path: str, examples: list[tf.train.Example]) -> str:
    with tf.io.TFRecordWriter(path, tf.io.TFRecordOptions(compression_type="GZIP")) as w:
        for example in examples:
            w.write(example.SerializeToString())
    return path


def test_training_batches_are_static_and_repeatable(tmp_path):
    path = _write(os.path.join(tmp_path, "data.gz"), [_example(i) for i in range(5)])
    config = TrainConfig(class_names=("a", "b"), input_size=SIZE, batch_size=2)
    first, second = (next(iter(make_dataset([path], config, training=True))) for _ in range(2))
    images, targets = first
    assert images.shape == (2, SIZE, SIZE, 3) and targets[HEATMAP].shape == (2, 16, 16, 2)
    assert targets[MASK].numpy().sum() >= 1
    np.testing.assert_array_equal(images.numpy(), second[0].numpy())
    eval_batches = list(make_dataset([str(tmp_path / "*")], config, training=False))
    assert [b[0].shape[0] for b in eval_batches] == [2, 2, 1]  # eval keeps every example


def test_training_order_does_not_depend_on_how_the_split_was_written(tmp_path):
    """A multi-worker ExampleGen writes a split's records across shards in a run-dependent
    order; the same records, however written, must give the same batches (and model) and
    the same int8 calibration images."""
    rng = np.random.default_rng(0)
    examples = [make_example(rng, i) for i in range(12)]
    in_id_order = _write(os.path.join(tmp_path, "ordered.gz"), examples)
    mixed = [examples[i] for i in np.random.default_rng(1).permutation(len(examples))]
    os.makedirs(tmp_path / "sharded")
    for shard, part in enumerate((mixed[:5], mixed[5:])):
        _write(os.path.join(tmp_path, "sharded", f"data-{shard}.gz"), part)
    patterns = (in_id_order, str(tmp_path / "sharded" / "*"))
    config = TrainConfig(class_names=tuple(CLASS_NAMES), input_size=SIZE, batch_size=4)
    runs = [np.stack([images.numpy() for images, _ in
                      make_dataset([pattern], config, training=True).take(6)])
            for pattern in patterns]
    np.testing.assert_array_equal(runs[0], runs[1])
    calibration = [np.stack(representative_images([pattern], SIZE, 5)) for pattern in patterns]
    np.testing.assert_array_equal(calibration[0], calibration[1])


def _long_tail(tmp_path) -> str:
    """8 images of class 1 only, 2 that also hold class 2 (f_1 = 1.0, f_2 = 0.2)."""
    examples = [_example(i, (1,)) for i in range(8)] + [_example(i, (1, 2)) for i in (8, 9)]
    return _write(os.path.join(tmp_path, "tail.gz"), examples)


def test_repeat_factors_follow_the_rarest_class(tmp_path):
    # r_c = max(1, sqrt(t / f_c)): class 1 in every image -> 1; class 2 in 20 % -> 2.
    factors = class_repeat_factors([_long_tail(tmp_path)], num_classes=2, threshold=0.8)
    np.testing.assert_allclose(factors, [1.0, 1.0, 2.0])


@pytest.mark.parametrize(("threshold", "rare_share"), [(0.0, 2 / 10), (0.8, 4 / 12)])
def test_repeat_factor_sampling_oversamples_rare_class_images(tmp_path, threshold, rare_share):
    config = TrainConfig(class_names=("a", "b"), input_size=SIZE, batch_size=1,
                         repeat_factor_threshold=threshold)
    dataset = make_dataset([_long_tail(tmp_path)], config, training=True).take(600)
    has_rare = [targets[HEATMAP][0, ..., 1].numpy().max() > 0.99 for _, targets in dataset]
    # Images with class 2 appear twice per pass: 4 of 12 draws instead of 2 of 10.
    assert np.mean(has_rare) == pytest.approx(rare_share, abs=0.05)
