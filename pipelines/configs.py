"""Run configurations: typed sections, named presets, checked command-line overrides.

    sightline run                      # preset "default": 3,000 synthetic images (README)
    sightline run --config tiny        # 48 images, seconds of training: CI and smoke tests
    sightline run --set train.epochs=5 --set gates.map_floor=0.3

Every setting is ``<section>.<field>`` (``data``, ``gates``, ``drift``, ``train``,
``edge``, ``beam``, ``release`` for ``sightline models``, ``monitor`` for ``sightline
monitor`` and ``feedback`` for ``sightline select/similar``; ``train.<hparam>`` for the
Trainer's ``TrainConfig``), plus the top-level ``pipeline_name``, ``enable_cache`` and
``metadata`` (where ML Metadata lives). Keys and values are checked when the config is
loaded, with the closest key suggested for a typo. Paths are not
configuration: they derive from the Sightline home (``SIGHTLINE_HOME``, default
``./.sightline``), see ``Paths``.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

from pipelines import metadata_store
from pipelines.settings import (
    DEFAULT_RUN_FN,
    BeamSettings,
    DataSettings,
    DriftSettings,
    EdgeSettings,
    FeedbackSettings,
    GateSettings,
    MonitorSettings,
    ReleaseSettings,
    SyntheticData,
    TrainSettings,
)

HOME_ENV = "SIGHTLINE_HOME"
DEFAULT_HOME = ".sightline"


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything a pipeline run depends on, except paths."""

    pipeline_name: str = "sightline"
    # Reuse a component's earlier outputs when its inputs and settings are unchanged.
    enable_cache: bool = False
    data: DataSettings = DataSettings()
    gates: GateSettings = GateSettings()
    drift: DriftSettings = DriftSettings()
    train: TrainSettings = TrainSettings()
    edge: EdgeSettings = EdgeSettings()
    beam: BeamSettings = BeamSettings()
    release: ReleaseSettings = ReleaseSettings()  # sightline models; not the DAG's
    monitor: MonitorSettings = MonitorSettings()  # sightline monitor; not the DAG's
    feedback: FeedbackSettings = FeedbackSettings()  # sightline select/similar; not the DAG's
    # ML Metadata: None for the home's SQLite file, or mysql://user:password@host:port/db
    # for a store a team shares (pipelines/metadata_store.py; docs/metadata.md).
    metadata: str | None = None

    def __post_init__(self) -> None:
        if self.metadata:
            metadata_store.parse_url(self.metadata)  # a ValueError naming what is wrong

    def sections(self) -> dict[str, Any]:
        """The typed sections, as ``create_pipeline`` takes them (``release`` is not one)."""
        return {name: getattr(self, name)
                for name in ("data", "gates", "drift", "train", "edge", "beam")}


# A ten-minute DAG: the Trainer gets a time budget (the other components take 2.3-5.4
# minutes on the CPUs measured), so the number of steps follows the machine and its load.
# Not the default: on a slow or busy machine the budget buys too few steps for a model
# that passes the gates (275 steps, mAP 0.002 on a loaded AVX2 EPYC), and a budgeted run
# is not bit-reproducible (docs/training.md#time-budget).
TEN_MINUTE_BUDGET_S = 240.0

CONFIGS: dict[str, RunConfig] = {
    "default": RunConfig(),
    "ten_minutes": RunConfig(train=TrainSettings(hparams={"time_budget_s": TEN_MINUTE_BUDGET_S})),
    # Seconds of training on 48 images: proves the DAG end to end, not the model.
    "tiny": RunConfig(
        pipeline_name="sightline-tiny",
        data=DataSettings(synthetic=SyntheticData(num_images=48, seed=7)),
        train=TrainSettings(hparams={"epochs": 1, "input_size": 96, "batch_size": 8}),
        gates=GateSettings(map_floor=0.0, min_slice_images=1),  # ~9 eval images per run
    ),
}


def load(name: str, overrides: Iterable[str] = ()) -> RunConfig:
    """A preset with ``key=value`` overrides applied, every key and value checked.

    Raises:
      ValueError: unknown preset, malformed override, unknown key (naming the closest
        one), a value of the wrong type or out of range (naming the key and the rule).
    """
    if name not in CONFIGS:
        raise ValueError(f"unknown config {name!r}; choose one of {sorted(CONFIGS)}")
    values = _as_dict(CONFIGS[name])
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} must look like key=value, e.g. train.epochs=3")
        _set(values, key.strip(), raw)
    _check_hparam_keys(values["train"])
    return _build(RunConfig, values)


def setting_keys() -> list[str]:
    """Every key ``--set`` accepts (the default run_fn's hparams included)."""
    return _keys(RunConfig, "") + [f"train.{k}" for k in TrainSettings.known_hparams()]


def flat_settings(config: RunConfig) -> dict[str, Any]:
    """{key: value} for every key ``--set`` accepts; hparams include TrainConfig defaults."""
    values: dict[str, Any] = {}

    def walk(obj: Any, prefix: str) -> None:
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                walk(value, f"{prefix}{f.name}.")
            elif not (isinstance(obj, TrainSettings) and f.name == "hparams"):
                values[prefix + f.name] = value

    walk(config, "")
    if config.train.run_fn == DEFAULT_RUN_FN:
        from trainer.config import TrainConfig

        defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
        values.update({f"train.{k}": defaults[k] for k in TrainSettings.known_hparams()})
    values.update({f"train.{k}": v for k, v in config.train.hparams.items()})
    if values["metadata"]:
        values["metadata"] = metadata_store.redact(values["metadata"])
    return dict(sorted(values.items()))


# --- overrides ----------------------------------------------------------------------


def _as_dict(obj: Any) -> dict[str, Any]:
    """A config as nested plain dicts (dataclasses.asdict keeps Mappings and tuples)."""
    return dataclasses.asdict(obj)


def _keys(cls: type, prefix: str) -> list[str]:
    keys = []
    for f in dataclasses.fields(cls):
        nested = _NESTED.get(f.type)
        if nested is not None:
            keys += _keys(nested, f"{prefix}{f.name}.")
        elif not (cls is TrainSettings and f.name == "hparams"):
            keys.append(prefix + f.name)
    return keys


_NESTED = {cls.__name__: cls for cls in (DataSettings, GateSettings, DriftSettings,
                                         TrainSettings, EdgeSettings, BeamSettings,
                                         ReleaseSettings, MonitorSettings, FeedbackSettings,
                                         SyntheticData)}


def _set(values: dict[str, Any], key: str, raw: str) -> None:
    """Sets ``key`` (dotted) in the nested dict, its value parsed by the field's type."""
    cls, node, parts = RunConfig, values, key.split(".")
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if cls is TrainSettings and part != "run_fn":
            if not last:
                _unknown(key)
            node["hparams"] = {**node["hparams"], part: _parse_json(raw)}
            return
        field = next((f for f in dataclasses.fields(cls) if f.name == part), None)
        if field is None:
            _unknown(key)
        nested = _NESTED.get(field.type)
        if last:
            if nested is not None:
                raise ValueError(f"{key!r} is a section; set one of its keys, e.g. "
                                 f"{_keys(nested, key + '.')[0]}=...")
            node[part] = _coerce(raw, field.type, key)
            return
        if nested is None:
            _unknown(key)
        cls, node = nested, node[part]


def _unknown(key: str) -> None:
    known = setting_keys()
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if not close:  # a flat name from older configs: match it on the key's last part
        tails = {k.rsplit(".", 1)[-1]: k for k in known}
        close = [tails[t] for t in difflib.get_close_matches(key.rsplit(".", 1)[-1], tails, n=1)]
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(f"unknown setting {key!r}{hint}; `sightline config` lists every key "
                     "with its value")


def _check_hparam_keys(train: Mapping[str, Any]) -> None:
    """Unknown ``train.<key>`` of the default run_fn fail here, with the closest key."""
    if train["run_fn"] != DEFAULT_RUN_FN:
        return
    for key in train["hparams"]:
        if key not in TrainSettings.known_hparams():
            _unknown(f"train.{key}")


def _parse_json(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def _coerce(raw: str, kind: str, key: str) -> Any:
    """The override text as the field's type, or an error naming the key and the type."""
    text = raw.strip()
    if kind == "str":
        return raw
    if kind == "str | None":
        return None if text.lower() in ("", "none", "null") else raw
    if kind == "bool":
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise ValueError(f"{key}={raw!r}: expected true or false")
    if kind == "int | None" and text.lower() in ("", "none", "null"):
        return None
    value = _parse_json(text)
    expected = {"int": int, "int | None": int, "float": (int, float)}.get(kind)
    if expected is not None:
        if isinstance(value, bool) or not isinstance(value, expected):
            wanted = "an integer" if kind == "int" else "a number"
            raise ValueError(f"{key}={raw!r}: expected {wanted}")
        return float(value) if kind == "float" else value
    if kind == "tuple[str, ...]":
        if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise ValueError(f'{key}={raw!r}: expected a JSON list of strings, e.g. ["a", "b"]')
        return tuple(value)
    if kind.startswith("Mapping"):
        if not isinstance(value, dict):
            raise ValueError(f'{key}={raw!r}: expected a JSON object, e.g. {{"train": 4}}')
        return value
    raise TypeError(f"no parser for {key} of type {kind}")  # a new field type: add it here


def _build(cls: type, values: Mapping[str, Any]) -> Any:
    """Nested dicts -> the frozen dataclasses; each section validates itself."""
    kwargs = {}
    for f in dataclasses.fields(cls):
        nested = _NESTED.get(f.type)
        kwargs[f.name] = _build(nested, values[f.name]) if nested else values[f.name]
    return cls(**kwargs)


# --- paths ----------------------------------------------------------------------------


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

    @property
    def logs(self) -> str:
        return os.path.join(self.home, "logs")

    def synthetic_data(self, synthetic: SyntheticData) -> str:
        return os.path.join(self.home, "datasets", synthetic.key)


def home_dir(home: str | None = None) -> str:
    """The Sightline home: the argument, else $SIGHTLINE_HOME, else ./.sightline."""
    return os.path.abspath(home or os.environ.get(HOME_ENV) or DEFAULT_HOME)
