"""TFX Trainer entry point: ``Trainer(run_fn="trainer.task.run_fn", custom_config=...)``."""

from __future__ import annotations

import os

# Where the Trainer runs in a process of its own (Kubeflow, Vertex), this module is the
# entry: select Keras 2 (tf_keras) before the model code first touches ``tf.keras``, which
# TensorFlow resolves lazily. ``sightline`` sets it at start-up for local runs.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tempfile

from tfx import v1 as tfx

from trainer.config import TrainConfig
from trainer.distill import teacher_dir
from trainer.export import export_saved_model
from trainer.train import is_chief, train


def run_fn(fn_args: tfx.components.FnArgs) -> None:
    """Trains the detector described by ``fn_args.custom_config`` and exports it.

    The budget is ``custom_config["epochs"]``, or ``time_budget_s`` seconds when set;
    ``fn_args.train_steps``/``eval_steps`` are honoured only when set to a positive number.
    With ``teacher`` set, the teacher is ``fn_args.base_model`` (the DAG's resolved or
    imported Model, so lineage records it), else ``teacher`` read as a path.
    """
    # --- config and teacher (before any training: a missing teacher fails here) ---------
    config = TrainConfig.from_dict(dict(fn_args.custom_config or {}))
    teacher = teacher_dir(config.teacher, fn_args.base_model)

    # --- train -----------------------------------------------------------------------
    result = train(config, fn_args.train_files, fn_args.eval_files, fn_args.model_run_dir,
                   train_steps=fn_args.train_steps, eval_steps=fn_args.eval_steps,
                   teacher_dir=teacher)

    # --- export (non-chief workers take part in the save but write to a scratch dir) ----
    hparams = {**config.to_dict(), **result.records()}
    export_dir = fn_args.serving_model_dir if is_chief() else tempfile.mkdtemp()
    export_saved_model(result.detector, export_dir, config.input_size, config.max_detections,
                       hparams, list(config.class_names))
