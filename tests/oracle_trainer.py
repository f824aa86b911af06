"""A Trainer ``run_fn`` for gate tests: exports the GT-reading FakeDetector instead of training.

Select it with ``--set train.run_fn=tests.oracle_trainer.run_fn`` and choose how good the model
is with ``--set train.oracle_jitter=0.05`` (and ``train.oracle_camera_jitter={"cam-b": 0.8}``
to degrade one camera's slice only).
"""

from __future__ import annotations

import json
import os

import tensorflow as tf

from tests.fake_detector import save_fake_detector
from trainer.export import ASSETS_EXTRA, HPARAMS_FILE

# The fake detector is not the Keras model in trainer/, so it has no TFLite variants.
ORACLE = ["train.run_fn=tests.oracle_trainer.run_fn", "train.oracle_jitter=0.05",
          "edge.enabled=false"]


def run_fn(fn_args) -> None:
    config = fn_args.custom_config
    path = fn_args.serving_model_dir
    save_fake_detector(path, config["oracle_jitter"], config.get("oracle_camera_jitter"))
    tf.io.gfile.makedirs(os.path.join(path, ASSETS_EXTRA))
    with tf.io.gfile.GFile(os.path.join(path, ASSETS_EXTRA, HPARAMS_FILE), "w") as f:
        json.dump(config, f)


def run_tiny(home: str, *overrides: str) -> dict:
    """The tiny config with this run_fn (and ``overrides``); its summary, stopped or not."""
    from rich.console import Console

    from pipelines import configs, local_runner
    from pipelines.reports import runs

    config = configs.load("tiny", [*ORACLE, *overrides])
    try:
        local_runner.run(config, home, Console(quiet=True))
    except Exception:  # noqa: BLE001 (a stopped run: its summary says why)
        pass
    return runs.summarize(runs.connect(configs.Paths(home, config.pipeline_name).metadata))
