"""Distillation: the loss terms on hand-made tensors, the frozen teacher, its loading."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
from tfx.components.trainer.fn_args_utils import FnArgs

from tests.trainer_fixture import CLASS_NAMES, make_example, write_split
from trainer import distill
from trainer.config import SERVING_SUBDIR, TrainConfig
from trainer.export import ASSETS_EXTRA, HPARAMS_FILE, export_saved_model, load_detector
from trainer.input import make_dataset
from trainer.losses import focal_loss
from trainer.model import HEATMAP, OFFSET, SIZE, build_model
from trainer.targets import MASK, encode_targets
from trainer.task import run_fn
from trainer.train import LOSS_NAMES, CenterNetTrainer, make_optimizer, precision_policy

INPUT_SIZE = 32


def _outputs(heatmap: np.ndarray, size: float = 0.0, offset: float = 0.0
             ) -> dict[str, tf.Tensor]:
    box = np.ones(heatmap.shape[:-1] + (2,), np.float32)
    return {HEATMAP: tf.constant(heatmap, tf.float32), SIZE: tf.constant(size * box),
            OFFSET: tf.constant(offset * box)}


def _targets(heatmap: np.ndarray) -> dict[str, tf.Tensor]:
    return {MASK: tf.constant((heatmap.max(-1) == 1.0).astype(np.float32))}


# --- the loss terms ----------------------------------------------------------------------


def test_soft_focal_loss_hand_computed():
    teacher, student = tf.constant([0.8, 0.1]), tf.constant([0.5, 0.1])
    bce = -(0.8 * math.log(0.5) + 0.2 * math.log(0.5))
    expected = 0.3**2 * bce / 2  # the equal cell adds nothing; 2 objects
    assert float(distill.soft_focal_loss(teacher, student, 2.0)) == pytest.approx(expected,
                                                                                   rel=1e-5)


def test_every_distill_term_is_zero_with_zero_gradient_when_the_student_is_the_teacher():
    rng = np.random.default_rng(0)
    heatmap = rng.uniform(0.0, 0.6, (2, 8, 8, 3)).astype(np.float32)
    heatmap[0, 2, 3, 1] = heatmap[1, 5, 5, 0] = 0.9  # two confident teacher peaks
    teacher = _outputs(heatmap, size=3.0, offset=0.5)
    student = {k: tf.Variable(v) for k, v in teacher.items()}
    with tf.GradientTape() as tape:
        terms = distill.distillation_loss(teacher, student, _targets(heatmap))
    assert {k: float(v) for k, v in terms.items()} == pytest.approx(
        dict.fromkeys(distill.DISTILL_NAMES, 0.0), abs=1e-9)
    for gradient in tape.gradient(terms["distill_loss"], list(student.values())):
        assert float(tf.reduce_max(tf.abs(gradient))) == pytest.approx(0.0, abs=1e-6)


def test_boxes_are_imitated_only_at_confident_teacher_peaks():
    heatmap = np.zeros((1, 6, 6, 2), np.float32)
    heatmap[0, 1, 1, 0] = 0.9  # a peak
    heatmap[0, 1, 2, 0] = 0.5  # beside it: not a local max
    heatmap[0, 4, 4, 1] = 0.2  # a local max, but below BOX_THRESHOLD
    peaks = distill.teacher_peaks(tf.constant(heatmap)).numpy()
    assert peaks.sum() == 1 and peaks[0, 1, 1] == 1
    terms = distill.distillation_loss(_outputs(heatmap, size=4.0, offset=0.5),
                                      _outputs(heatmap), _targets(heatmap))
    assert float(terms["size_distill_loss"]) == pytest.approx(8.0)  # |4| x 2 channels / 1 peak
    assert float(terms["offset_distill_loss"]) == pytest.approx(1.0)
    assert float(terms["heatmap_distill_loss"]) == pytest.approx(0.0, abs=1e-9)


def test_heatmap_distillation_has_the_scale_of_the_ground_truth_focal_loss():
    boxes = tf.constant([[0.1, 0.1, 0.4, 0.5], [0.5, 0.5, 0.9, 0.8], [0.2, 0.6, 0.35, 0.75]])
    targets = encode_targets(boxes, tf.constant([1, 2, 1]), 32, 3)
    truth = targets[HEATMAP][None]
    teacher = 0.8 * truth + 0.01  # a good teacher: peaks a little below 1, a faint floor
    num_objects = tf.reduce_sum(targets[MASK])
    for prior in (0.1, 0.01):  # the heatmap's initial prior, and a trained background
        student = tf.fill(truth.shape, prior)
        ratio = float(distill.soft_focal_loss(teacher, student, num_objects)
                      / focal_loss(truth, student))
        assert 0.5 < ratio < 2.0, prior


# --- the frozen teacher in a training step -----------------------------------------------


def test_no_gradient_reaches_the_teacher():
    teacher = build_model("small", INPUT_SIZE, 2)
    student = build_model("small", INPUT_SIZE, 2)
    images = tf.random.stateless_uniform((2, INPUT_SIZE, INPUT_SIZE, 3), seed=(1, 2))
    with tf.GradientTape(persistent=True) as tape:
        outputs = student(images, training=True)
        soft = distill.teacher_outputs(teacher, images)
        loss = distill.distillation_loss(soft, outputs, {MASK: tf.ones((2, 8, 8))})
    assert all(g is None for g in tape.gradient(loss["distill_loss"],
                                                teacher.trainable_variables))
    assert all(g is not None for g in tape.gradient(loss["distill_loss"],
                                                    student.trainable_variables))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[str, str]:
    root = str(tmp_path_factory.mktemp("data"))
    rng = np.random.default_rng(0)
    examples = [make_example(rng, i) for i in range(12)]
    return (write_split(os.path.join(root, "train"), examples[:8]),
            write_split(os.path.join(root, "eval"), examples[8:]))


def test_fit_reports_the_distill_terms_and_leaves_the_teacher_as_it_was(data):
    config = TrainConfig(class_names=tuple(CLASS_NAMES), input_size=INPUT_SIZE, batch_size=4)
    teacher = build_model("small", INPUT_SIZE, 2)
    teacher.trainable = False
    before = [w.copy() for w in teacher.get_weights()]  # BN moving stats included
    student = build_model("small", INPUT_SIZE, 2)
    trainer = CenterNetTrainer(student, teacher, distill_weight=0.5)
    trainer.compile(optimizer=make_optimizer(1e-2, 1e-4, 4, 1))
    history = trainer.fit(make_dataset([data[0]], config, training=True), epochs=1,
                          steps_per_epoch=2, validation_data=make_dataset([data[1]], config,
                                                                          training=False),
                          verbose=0).history
    logs = {k: v[-1] for k, v in history.items()}
    assert set(logs) == {*LOSS_NAMES, *distill.DISTILL_NAMES, *(f"val_{n}" for n in LOSS_NAMES)}
    assert logs["distill_loss"] > 0 and logs["size_distill_loss"] >= 0
    for after, original in zip(teacher.get_weights(), before, strict=True):
        np.testing.assert_array_equal(after, original)
    # Only the student is trained and checkpointed: the teacher is loaded again, never saved.
    assert {id(v) for v in trainer.variables} >= {id(v) for v in student.variables}
    assert not {id(v) for v in trainer.variables} & {id(v) for v in teacher.variables}


# --- finding and loading the teacher -----------------------------------------------------


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> str:
    """An untrained `small` detector exported like a Trainer's model (32 px, 2 classes)."""
    export_dir = str(tmp_path_factory.mktemp("teacher") / SERVING_SUBDIR)
    config = TrainConfig(class_names=tuple(CLASS_NAMES), input_size=INPUT_SIZE)
    keras.utils.set_random_seed(3)
    export_saved_model(build_model("small", INPUT_SIZE, 2), export_dir, INPUT_SIZE, 10,
                       config.to_dict(), list(CLASS_NAMES))
    return export_dir


def test_the_teacher_is_found_from_base_model_or_its_path(exported):
    model_dir = os.path.dirname(exported)
    assert distill.teacher_dir("", exported) is None
    assert distill.teacher_dir("medium", exported) == exported  # the DAG's resolved Model
    assert distill.teacher_dir(model_dir, None) == exported  # a Trainer Model folder
    assert distill.teacher_dir(exported, None) == exported  # its Format-Serving
    # An imported pushed version: TFX appends Format-Serving to it.
    assert distill.teacher_dir(exported, os.path.join(exported, "Format-Serving")) == exported
    with pytest.raises(ValueError, match="no SavedModel"):
        distill.teacher_dir(os.path.join(model_dir, "missing"), None)


def test_a_teacher_size_without_a_recorded_model_says_how_to_train_one():
    with pytest.raises(ValueError, match="holds no 'medium' Model") as error:
        distill.teacher_dir("medium", None)
    assert "sightline run --set train.model_size=medium" in str(error.value)


@pytest.mark.parametrize("student, words", [
    ({"input_size": 64}, "trained at input_size=32 on classes ['square', 'bar']; the student "
                         "trains at input_size=64 on classes ['square', 'bar']"),
    ({"class_names": ("square", "disc")}, "the student trains at input_size=32 on classes "
                                          "['square', 'disc']"),
    ({"teacher": "medium"}, "is a 'small' model"),
])
def test_an_incompatible_teacher_is_rejected_naming_both(exported, student, words):
    config = TrainConfig(**{"class_names": tuple(CLASS_NAMES), "input_size": INPUT_SIZE,
                            **student})
    with pytest.raises(ValueError, match="teacher") as error:
        distill.load_teacher(exported, config)
    assert words in str(error.value)


def test_a_bfloat16_teacher_gives_float32_outputs_close_to_float32(exported):
    config = TrainConfig(class_names=tuple(CLASS_NAMES), input_size=INPUT_SIZE)
    images = tf.random.stateless_uniform((2, INPUT_SIZE, INPUT_SIZE, 3), seed=(4, 5))
    with precision_policy("float32"):
        reference = distill.teacher_outputs(distill.load_teacher(exported, config), images)
    with precision_policy("bfloat16"):
        teacher = distill.load_teacher(exported, config)
        outputs = distill.teacher_outputs(teacher, images)
    assert not teacher.trainable and teacher.compute_dtype == "bfloat16"
    for name, value in outputs.items():
        assert value.dtype == tf.float32
        np.testing.assert_allclose(value.numpy(), reference[name].numpy(), atol=0.05, rtol=0.05)


@pytest.mark.slow
def test_run_fn_distils_from_base_model_and_records_the_teacher(exported, data, tmp_path,
                                                               monkeypatch):
    loaded = []

    def spy(export_dir: str, student: TrainConfig) -> keras.Model:
        loaded.append(real_load(export_dir, student))
        return loaded[-1]

    real_load = distill.load_teacher
    monkeypatch.setattr(distill, "load_teacher", spy)
    config = TrainConfig(class_names=tuple(CLASS_NAMES), input_size=INPUT_SIZE, epochs=1,
                         batch_size=4, max_detections=10, teacher="small")
    fn_args = FnArgs(train_files=[data[0]], eval_files=[data[1]],
                     serving_model_dir=str(tmp_path / "serving"),
                     model_run_dir=str(tmp_path / "run"), custom_config=config.to_dict(),
                     base_model=exported)  # what TFX gives the Trainer from the resolver
    run_fn(fn_args)
    with open(tmp_path / "serving" / ASSETS_EXTRA / HPARAMS_FILE) as f:
        hparams = json.load(f)
    assert hparams["teacher"] == "small" and hparams["teacher_uri"] == exported
    assert hparams["final_distill_loss"] > 0 and hparams["train_steps"] == 2
    [teacher] = loaded
    reference, _ = load_detector(exported)
    for after, original in zip(teacher.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_array_equal(after, original)
