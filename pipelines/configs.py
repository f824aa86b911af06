"""Run configurations: one typed config, named presets, command-line overrides.

    sightline run                      # preset "default": 3,000 synthetic images (see README)
    sightline run --config tiny        # 48 images, seconds of training: CI and smoke tests
    sightline run --set train.epochs=5 --set map_floor=0.3

Every field can be overridden with ``--set field=value`` (``train.<key>`` for the
Trainer's custom_config). Paths are not configuration: they derive from the Sightline
home (``SIGHTLINE_HOME``, default ``./.sightline``), see ``paths``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable
from typing import Any

from schemas import DEFAULT_SCHEMA_PATH

HOME_ENV = "SIGHTLINE_HOME"
DEFAULT_HOME = ".sightline"


@dataclasses.dataclass(frozen=True)
class SyntheticData:
    """The generated dataset used when no data_root is given."""

    num_images: int = 3000
    seed: int = 0
    scenario: str = "default"

    @property
    def key(self) -> str:
        return f"{self.scenario}-{self.num_images}-seed{self.seed}"


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything a pipeline run depends on, except paths."""

    pipeline_name: str = "sightline"
    data_root: str | None = None  # a COCO dataset folder; None: the synthetic dataset
    annotations_pattern: str = "annotations.json"
    synthetic: SyntheticData = SyntheticData()
    schema_path: str = DEFAULT_SCHEMA_PATH
    split_buckets: dict[str, int] = dataclasses.field(
        default_factory=lambda: {"train": 4, "eval": 1}
    )
    train: dict[str, Any] = dataclasses.field(default_factory=dict)
    # A floor that catches a broken model, not a quality bar: the default detector reaches
    # mAP ~0.22-0.24 in its ~6.5-minute budget (README); raise it as the trainer improves.
    map_floor: float = 0.1
    max_map_regression: float = 0.01
    # No slice of these features may lose more mAP than this versus the blessed model;
    # slices with fewer than min_slice_images eval images are "too few examples" instead.
    gated_slices: tuple[str, ...] = ("meta/camera", "meta/lighting")
    max_slice_map_regression: float = 0.05
    min_slice_images: int = 20
    # The Trainer's run_fn: swap in your own model code without touching the DAG.
    run_fn: str = "trainer.task.run_fn"
    # Reuse a component's earlier outputs when its inputs and settings are unchanged.
    enable_cache: bool = False
    # Drift versus the previous span: "fail" stops the run before training, "warn" records
    # it and trains. L∞ / JS thresholds are the schema's drift comparators.
    on_drift: str = "fail"
    psi_threshold: float = 0.25
    box_fit_tolerance: float = 0.3  # per-class median object/box area may move ±30 %
    # The edge branch: QAT fine-tune epochs and rate, and how much mAP a TFLite variant
    # may lose versus the float model and still ship (0.01 = one point). False leaves
    # the branch out (e.g. for a run_fn whose model is not trainer/'s Keras detector).
    edge: bool = True
    qat_epochs: int = 1  # measured: 1 epoch at 1e-4 ends 0.5 mAP points below float
    qat_learning_rate: float = 1e-4
    edge_map_tolerance: float = 0.01
    # Beam: "in_memory" or "multi_processing" locally; extra args reach any runner
    # (e.g. --runner=DataflowRunner --project=... for the same DAG on Dataflow).
    beam_direct_running_mode: str = "in_memory"
    beam_num_workers: int = 2
    beam_extra_args: tuple[str, ...] = ()

    def beam_pipeline_args(self) -> list[str]:
        return [
            f"--direct_running_mode={self.beam_direct_running_mode}",
            f"--direct_num_workers={self.beam_num_workers}",
            *self.beam_extra_args,
        ]


def pipeline_arguments(config: RunConfig) -> dict[str, Any]:
    """The ``create_pipeline`` arguments a config decides (runners add paths and infra)."""
    from schemas.curate import class_names  # imports TFDV: not needed to parse a config

    return {
        "pipeline_name": config.pipeline_name,
        "annotations_pattern": config.annotations_pattern,
        "schema_path": config.schema_path,
        "class_names": class_names(config.schema_path),
        "train_config": config.train,
        "split_buckets": config.split_buckets,
        "map_floor": config.map_floor,
        "max_map_regression": config.max_map_regression,
        "gated_slices": list(config.gated_slices),
        "max_slice_map_regression": config.max_slice_map_regression,
        "min_slice_images": config.min_slice_images,
        "run_fn": config.run_fn,
        "enable_cache": config.enable_cache,
        "on_drift": config.on_drift,
        "psi_threshold": config.psi_threshold,
        "box_fit_tolerance": config.box_fit_tolerance,
        "qat_epochs": config.qat_epochs,
        "qat_learning_rate": config.qat_learning_rate,
        "edge_map_tolerance": config.edge_map_tolerance,
    }


CONFIGS: dict[str, RunConfig] = {
    "default": RunConfig(),
    # Seconds of training on 48 images: proves the DAG end to end, not the model.
    "tiny": RunConfig(
        pipeline_name="sightline-tiny",
        synthetic=SyntheticData(num_images=48, seed=7),
        train={"epochs": 1, "input_size": 96, "batch_size": 8},
        map_floor=0.0,
        min_slice_images=1,  # ~9 eval images: every slice is small
    ),
}


@dataclasses.dataclass(frozen=True)
class Paths:
    """Where a run reads and writes, all under the Sightline home."""

    home: str
    pipeline_name: str

    @property
    def pipeline_root(self) -> str:
        return os.path.join(self.home, "pipelines", self.pipeline_name)

    @property
    def metadata(self) -> str:
        return os.path.join(self.home, "metadata.sqlite")

    @property
    def serving_model_dir(self) -> str:
        return os.path.join(self.home, "serving", self.pipeline_name)

    @property
    def edge_bundle_dir(self) -> str:
        return os.path.join(self.home, "edge", self.pipeline_name)

    def synthetic_data(self, synthetic: SyntheticData) -> str:
        return os.path.join(self.home, "datasets", synthetic.key)


def home_dir(home: str | None = None) -> str:
    """The Sightline home: the argument, else $SIGHTLINE_HOME, else ./.sightline."""
    return os.path.abspath(home or os.environ.get(HOME_ENV) or DEFAULT_HOME)


def load(name: str, overrides: Iterable[str] = ()) -> RunConfig:
    """A preset with ``field=value`` overrides applied (values parsed as JSON if they can be)."""
    if name not in CONFIGS:
        raise ValueError(f"unknown config {name!r}; choose one of {sorted(CONFIGS)}")
    config = CONFIGS[name]
    for item in overrides:
        field, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} must look like field=value, e.g. train.epochs=3")
        config = _override(config, field.strip(), _parse(raw))
    return config


def _parse(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def _override(config: RunConfig, field: str, value: Any) -> RunConfig:
    head, _, rest = field.partition(".")
    if head == "train" and rest:
        return dataclasses.replace(config, train={**config.train, rest: value})
    if head == "synthetic" and rest:
        return dataclasses.replace(
            config, synthetic=_replace_checked(config.synthetic, rest, value)
        )
    return _replace_checked(config, field, value)


def _replace_checked(obj: Any, field: str, value: Any) -> Any:
    names = [f.name for f in dataclasses.fields(obj)]
    if field not in names:
        raise ValueError(f"unknown field {field!r} in {type(obj).__name__}; fields: {names}")
    return dataclasses.replace(obj, **{field: value})
