"""run_fn end to end on tiny data, then the exported SavedModel's contract."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from tfx.components.trainer.fn_args_utils import FnArgs

from data import feature_spec as fs
from tests.trainer_fixture import CLASS_NAMES, make_example, write_split
from trainer import export
from trainer.config import TrainConfig
from trainer.decode import BOXES, CLASSES, NUM_DETECTIONS, SCORES
from trainer.hardware import cpu_flags, resolve_precision
from trainer.task import run_fn

INPUT_SIZE = 64
MAX_DETECTIONS = 20


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    """Trains 1 epoch on 24 examples; returns (serving dir, loaded model, eval examples)."""
    root = str(tmp_path_factory.mktemp("run"))
    rng = np.random.default_rng(0)
    examples = [make_example(rng, i) for i in range(32)]
    config = TrainConfig(class_names=tuple(CLASS_NAMES), input_size=INPUT_SIZE, epochs=1,
                         batch_size=8, max_detections=MAX_DETECTIONS)
    fn_args = FnArgs(
        train_files=[write_split(os.path.join(root, "Split-train"), examples[:24])],
        eval_files=[write_split(os.path.join(root, "Split-eval"), examples[24:])],
        serving_model_dir=os.path.join(root, "serving"),
        model_run_dir=os.path.join(root, "run"),
        custom_config=config.to_dict(),
        train_steps=None,
        eval_steps=None,
    )
    run_fn(fn_args)
    serving_dir = fn_args.serving_model_dir
    return serving_dir, tf.saved_model.load(serving_dir), examples[24:]


def test_signatures_have_the_contract_outputs(trained):
    _, loaded, _ = trained
    assert set(loaded.signatures) == {export.SERVING_DEFAULT, export.SERVING_EXAMPLES}
    expected = {BOXES: (tf.float32, [None, MAX_DETECTIONS, 4]),
                SCORES: (tf.float32, [None, MAX_DETECTIONS]),
                CLASSES: (tf.float32, [None, MAX_DETECTIONS]),
                NUM_DETECTIONS: (tf.int32, [None])}
    for name, inputs in ((export.SERVING_DEFAULT, "images"), (export.SERVING_EXAMPLES, "examples")):
        signature = loaded.signatures[name]
        _, kwargs = signature.structured_input_signature
        assert list(kwargs) == [inputs] and kwargs[inputs].dtype == tf.string
        outputs = signature.structured_outputs
        assert {k: (v.dtype, v.shape.as_list()) for k, v in outputs.items()} == expected


def test_image_and_example_signatures_agree_bit_for_bit(trained):
    _, loaded, examples = trained
    images = tf.constant([e.features.feature[fs.IMAGE_ENCODED].bytes_list.value[0]
                          for e in examples])
    # Only the image travels in the example: other features must not matter.
    wrapped = tf.constant([
        tf.train.Example(features=tf.train.Features(feature={
            fs.IMAGE_ENCODED: e.features.feature[fs.IMAGE_ENCODED]})).SerializeToString()
        for e in examples])
    from_images = loaded.signatures[export.SERVING_DEFAULT](images=images)
    from_examples = loaded.signatures[export.SERVING_EXAMPLES](examples=wrapped)
    for key, value in from_images.items():
        np.testing.assert_array_equal(value.numpy(), from_examples[key].numpy(), err_msg=key)


def test_outputs_are_consistent(trained):
    _, loaded, examples = trained
    serialized = tf.constant([e.SerializeToString() for e in examples])
    out = {k: v.numpy() for k, v in loaded.signatures[export.SERVING_EXAMPLES](
        examples=serialized).items()}
    boxes, scores, num = out[BOXES], out[SCORES], out[NUM_DETECTIONS]
    assert ((boxes >= 0) & (boxes <= 1)).all()
    assert (boxes[..., 2] >= boxes[..., 0]).all() and (boxes[..., 3] >= boxes[..., 1]).all()
    for i, n in enumerate(num):
        assert (scores[i, :n] > 0).all() and (scores[i, n:] == 0).all()
        assert np.isin(out[CLASSES][i, :n], [1, 2]).all()


def test_hparams_and_labels_are_saved_with_the_model(trained):
    serving_dir, _, _ = trained
    extra = os.path.join(serving_dir, export.ASSETS_EXTRA)
    with open(os.path.join(extra, export.HPARAMS_FILE)) as f:
        hparams = json.load(f)
    with open(os.path.join(extra, export.LABELS_FILE)) as f:
        assert json.load(f) == CLASS_NAMES
    losses = {k: hparams.pop(k) for k in ("final_train_loss", "final_eval_loss")}
    assert all(np.isfinite(v) for v in losses.values())
    # What the run took: 24 examples / 8 = 3 steps, too few to time (steps 5-25).
    took = {k: hparams.pop(k) for k in ("train_steps", "step_seconds", "train_seconds",
                                        "compute_precision")}
    assert took["train_steps"] == 3 and took["step_seconds"] == 0 and took["train_seconds"] > 0
    assert took["compute_precision"] == resolve_precision("auto", cpu_flags())
    assert TrainConfig.from_dict(hparams).input_size == INPUT_SIZE
