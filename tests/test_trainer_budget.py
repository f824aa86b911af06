"""train.time_budget_s and train.precision: the plan, the schedule, the records."""

from __future__ import annotations

import json
import math
import os
import types

import numpy as np
import pytest
import tensorflow as tf
from tfx.components.trainer.fn_args_utils import FnArgs

from tests.trainer_fixture import CLASS_NAMES, make_example, write_split
from trainer import export, hardware, train
from trainer.config import TrainConfig
from trainer.schedule import WarmupCosine
from trainer.task import run_fn


def test_steps_that_fit_follow_the_measured_step_time():
    # 100 s left at 0.1 s/step, 3 validations of 10 batches at a third of a step (1 s):
    # (100 - 1) * 0.95 / 0.1 = 940 more steps after the 25 taken.
    assert train.budget_steps(25, 0.1, 100.0, 10) == 25 + 940
    assert train.budget_steps(25, 0.2, 100.0, 10) == 25 + math.floor(98 * 0.95 / 0.2)
    assert train.budget_steps(25, 0.1, -5.0, 10) == 25  # over budget: stop now


class _Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _run_steps(callback: train.StepBudget, steps: int, seconds_per_step: float,
               clock: _Clock, first_epoch: tuple[int, float] | None = None
               ) -> types.SimpleNamespace:
    """Runs ``steps`` at ``seconds_per_step``, or the first ``first_epoch[0]`` steps at
    ``first_epoch[1]`` (the epoch that also fills the decoded-image cache)."""
    model = types.SimpleNamespace(optimizer=types.SimpleNamespace(iterations=tf.Variable(0)),
                                  stop_training=False)
    callback.set_model(model)
    callback.on_train_begin()
    for step in range(1, steps + 1):
        slow = first_epoch is not None and step <= first_epoch[0]
        clock.now += first_epoch[1] if slow else seconds_per_step
        model.optimizer.iterations.assign(step)
        callback.on_train_batch_end(step - 1)
        if model.stop_training:
            break
    return model


def _budgeted_run(monkeypatch, warmup: int, first_epoch: tuple[int, float] | None = None
                  ) -> tuple[train.StepBudget, WarmupCosine, train.Plan, tf.Variable, object]:
    """Epochs of 40 steps at 0.1 s (``first_epoch`` aside) until a 120 s deadline, with
    3 validations of 6 batches."""
    clock = _Clock()
    monkeypatch.setattr(train.time, "perf_counter", clock)
    schedule = WarmupCosine(0.01, total_steps=warmup, warmup_steps=warmup)
    plan = train.Plan(steps_per_epoch=40, total_steps=None, validation_epochs=[])
    planned = tf.Variable(0, dtype=tf.int64)
    callback = train.StepBudget(plan, schedule, planned, deadline=clock.now + 120.0,
                                eval_batches=6)
    model = _run_steps(callback, 10_000, 0.1, clock, first_epoch)
    return callback, schedule, plan, planned, model


def test_budget_fixes_the_length_and_the_schedule_ends_at_zero_there(monkeypatch):
    callback, schedule, plan, planned, model = _budgeted_run(monkeypatch, warmup=30)
    # Planned at step 25 (2.5 s), then again at the second epoch's step 25, global step
    # 65 (6.5 s).
    expected = train.budget_steps(65, 0.1, 120.0 - 6.5, 6)
    assert callback.step_seconds == pytest.approx(0.1)
    assert plan.total_steps == schedule.total_steps == int(planned.numpy()) == expected
    assert model.stop_training and int(model.optimizer.iterations.numpy()) == expected
    assert schedule.warmup_steps == 30  # the measuring steps stayed in warmup
    assert float(schedule(expected)) == pytest.approx(0.0, abs=1e-9)
    assert float(schedule(expected - 1)) > 0.0
    assert float(schedule((30 + expected) / 2)) == pytest.approx(0.005, rel=1e-3)
    epochs = math.ceil(expected / 40)
    assert plan.epochs == epochs and plan.validation_epochs[-1] == epochs
    assert len(plan.validation_epochs) <= train.NUM_VALIDATIONS


def test_the_plan_is_made_again_from_the_second_epochs_steps(monkeypatch):
    # The first epoch runs at 0.15 s/step (it also decodes), the rest at 0.1 s: the plan
    # made at step 25 is too short; the one made at step 40 + 25 uses the 0.1 s steps.
    callback, schedule, plan, planned, model = _budgeted_run(monkeypatch, warmup=40,
                                                             first_epoch=(40, 0.15))
    first_plan = train.budget_steps(25, 0.15, 120.0 - 25 * 0.15, 6)
    expected = train.budget_steps(65, 0.1, 120.0 - (40 * 0.15 + 25 * 0.1), 6)
    assert expected > first_plan
    assert callback.step_seconds == pytest.approx(0.1)
    assert plan.total_steps == schedule.total_steps == int(planned.numpy()) == expected
    assert int(model.optimizer.iterations.numpy()) == expected
    assert schedule.warmup_steps == 40
    assert float(schedule(expected)) == pytest.approx(0.0, abs=1e-9)
    assert plan.validation_epochs[-1] == math.ceil(expected / 40)


def test_a_resumed_budgeted_run_keeps_its_plan(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(train.time, "perf_counter", clock)
    schedule = WarmupCosine(0.01, total_steps=500, warmup_steps=30)
    plan = train.Plan(steps_per_epoch=40, total_steps=None, validation_epochs=[])
    callback = train.StepBudget(plan, schedule, tf.Variable(500, dtype=tf.int64),
                                deadline=clock.now + 1.0, eval_batches=6)
    _run_steps(callback, 0, 0.1, clock)
    assert plan.total_steps == 500 and plan.validation_epochs == [5, 10, 13]


def test_fixed_epochs_plan_is_unchanged():
    """Without a budget: the step count, warmup, validations and schedule are as before."""
    config = TrainConfig(class_names=("a",), epochs=32, batch_size=16)
    steps_per_epoch, warmup = train.plan_steps(config, 2413)
    assert (steps_per_epoch, warmup) == (150, 150)
    assert train.validation_epochs(32) == [11, 22, 32]
    assert train.validation_epochs(1) == [1]
    schedule = WarmupCosine(8e-3, 150 * 32, warmup)
    for step in (0, 75, 150, 2400, 4799, 4800):
        progress = min(max((step - 150) / (4800 - 150), 0.0), 1.0)
        closed_form = (8e-3 * step / 150 if step < 150
                       else 8e-3 * 0.5 * (1 + math.cos(math.pi * progress)))
        assert float(schedule(step)) == pytest.approx(closed_form, rel=1e-6, abs=1e-9)
    budgeted = TrainConfig(class_names=("a",), time_budget_s=300.0, warmup_epochs=0.0)
    assert train.plan_steps(budgeted, 2413)[1] == train.MEASURE_STEPS[1]


@pytest.mark.parametrize("flags, requested, expected", [
    ({"avx2", "fma"}, "auto", "float32"),
    ({"avx2", "avx512f", "avx512_bf16"}, "auto", "bfloat16"),
    ({"avx512f", "amx_bf16", "amx_tile"}, "auto", "bfloat16"),
    ({"avx512f", "amx_bf16"}, "float32", "float32"),
    ({"avx2"}, "bfloat16", "bfloat16"),
])
def test_precision_follows_the_cpu_unless_set(flags, requested, expected):
    assert hardware.resolve_precision(requested, flags) == expected


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: X\nflags\t\t: avx2 amx_bf16\n\n"
                       "processor\t: 1\nflags\t\t: avx2 amx_bf16\n")
    assert hardware.cpu_flags(cpuinfo) == {"avx2", "amx_bf16"}
    assert hardware.cpu_flags(tmp_path / "missing") == set()


def _tiny_run(root: str, **overrides) -> tuple[str, dict]:
    rng = np.random.default_rng(0)
    examples = [make_example(rng, i) for i in range(20)]
    config = TrainConfig(class_names=tuple(CLASS_NAMES), input_size=32, batch_size=4,
                         max_detections=10, **overrides)
    fn_args = FnArgs(
        train_files=[write_split(os.path.join(root, "Split-train"), examples[:16])],
        eval_files=[write_split(os.path.join(root, "Split-eval"), examples[16:])],
        serving_model_dir=os.path.join(root, "serving"), model_run_dir=os.path.join(root, "run"),
        custom_config=config.to_dict(), train_steps=None, eval_steps=None)
    run_fn(fn_args)
    with open(os.path.join(fn_args.serving_model_dir, export.ASSETS_EXTRA,
                           export.HPARAMS_FILE)) as f:
        return fn_args.serving_model_dir, json.load(f)


@pytest.mark.slow
def test_a_budgeted_run_records_its_plan(tmp_path):
    # 4 steps per epoch; the export reserve eats the budget, so it stops after measuring.
    _, hparams = _tiny_run(str(tmp_path), time_budget_s=train.EXPORT_RESERVE_S + 1)
    assert hparams["train_steps"] == train.MEASURE_STEPS[1]
    assert hparams["time_budget_s"] == train.EXPORT_RESERVE_S + 1
    assert hparams["step_seconds"] > 0 and hparams["train_seconds"] > 0
    assert hparams["compute_precision"] == hardware.resolve_precision(
        "auto", hardware.cpu_flags())


@pytest.mark.slow
def test_a_bfloat16_run_exports_float32_signatures(tmp_path):
    serving_dir, hparams = _tiny_run(str(tmp_path), epochs=1, precision="bfloat16")
    assert hparams["compute_precision"] == "bfloat16" and hparams["train_steps"] == 4
    loaded = tf.saved_model.load(serving_dir)
    assert all(v.dtype == tf.float32 for v in loaded.weights)
    signature = loaded.signatures[export.SERVING_DEFAULT]
    library = signature.graph.as_graph_def().library.function
    conv_dtypes = {node.attr["T"].type for function in library for node in function.node_def
                   if node.op == "Conv2D"}
    assert conv_dtypes == {tf.float32.as_datatype_enum}  # no bf16 compute left in serving
    outputs = signature.structured_outputs
    assert outputs["detection_boxes"].dtype == tf.float32
