"""train.teacher in the DAG: the resolver strategy on a real ML Metadata store, the wiring
into the Trainer's base_model, and the settings' checks."""

from __future__ import annotations

import json

import pytest
from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2 as pb
from rich.console import Console
from tfx.dsl.compiler import compiler
from tfx.dsl.components.common import importer as importer_lib
from tfx.dsl.components.common import resolver as resolver_lib
from tfx.types import standard_artifacts

from pipelines import configs, kubeflow_runner, local_runner, teacher
from pipelines.reports import runs
from pipelines.teacher import LatestModelOfSizeStrategy
from trainer.executor import record_hparams

CLASSES = ["circle", "square"]
PIPELINE = "sightline-tiny"


def _store_with_models(models: list[dict], pipeline: str = PIPELINE,
                       store: metadata_store.MetadataStore | None = None
                       ) -> metadata_store.MetadataStore:
    """An in-memory MLMD store with live Model artifacts of ``pipeline`` recording these
    hparams, as the Trainer's executor records them."""
    if store is None:
        config = pb.ConnectionConfig()
        config.fake_database.SetInParent()
        store = metadata_store.MetadataStore(config)
    type_id = store.put_artifact_type(standard_artifacts.Model._get_artifact_type())  # noqa: SLF001
    context_type = store.put_context_type(pb.ContextType(name=teacher.PIPELINE_CONTEXT))
    context = store.get_context_by_type_and_name(teacher.PIPELINE_CONTEXT, pipeline)
    if context is None:
        [context] = store.put_contexts([pb.Context(type_id=context_type, name=pipeline)])
    else:
        context = context.id
    for hparams in models:
        model = standard_artifacts.Model()
        model.uri = f"/{pipeline}/models/{len(store.get_artifacts())}"
        model.type_id = type_id
        model.state = "published"  # LIVE in MLMD
        record_hparams(model, hparams)
        [artifact_id] = store.put_artifacts([model.mlmd_artifact])
        store.put_attributions_and_associations(
            [pb.Attribution(artifact_id=artifact_id, context_id=context)], [])
    return store


def _resolve(store: metadata_store.MetadataStore, **wanted) -> list[str]:
    models = teacher.recorded_models(store, PIPELINE)
    resolved = LatestModelOfSizeStrategy(**wanted).resolve_artifacts(store, {"model": models})
    return [m.uri.removeprefix(f"/{PIPELINE}") for m in resolved["model"]]


def test_the_latest_model_of_the_size_input_size_and_classes_is_resolved():
    medium = {"model_size": "medium", "input_size": 128, "class_names": CLASSES}
    store = _store_with_models([
        medium,  # /models/0: an older teacher
        {**medium, "model_size": "small"},
        medium,  # /models/2: the latest matching
        {**medium, "input_size": 160},
        {**medium, "class_names": ["circle", "square", "hexagon"]},
        {"model_size": "medium"},  # a custom run_fn's model, recording less
    ])
    _store_with_models([medium], pipeline="another-pipeline", store=store)  # not this one's
    assert _resolve(store, model_size="medium", input_size=128,
                    class_names=CLASSES) == ["/models/2"]
    assert _resolve(store, model_size="small", input_size=128,
                    class_names=CLASSES) == ["/models/1"]
    # None yet: an empty channel, not a failed resolver; the Trainer then says what to do.
    assert _resolve(store, model_size="medium", input_size=96, class_names=CLASSES) == []


def _build(tmp_path, *overrides: str):
    config = configs.load("tiny", overrides)
    return local_runner.build(config, configs.Paths(str(tmp_path), config.pipeline_name),
                              str(tmp_path / "data"))


def _node_inputs(ir, node_id: str):
    [node] = [n.pipeline_node for n in ir.nodes if n.pipeline_node.node_info.id == node_id]
    return node.inputs.inputs


def test_a_teacher_size_wires_the_resolver_into_the_trainers_base_model(tmp_path):
    pipeline = _build(tmp_path, "train.teacher=medium", "train.input_size=64")
    components = {c.id: c for c in pipeline.components}
    resolver, trainer = components["teacher_resolver"], components["Trainer"]
    assert trainer.inputs["base_model"] is resolver.outputs["model"]
    assert resolver.exec_properties[resolver_lib.RESOLVER_STRATEGY_CLASS] is \
        LatestModelOfSizeStrategy
    wanted = resolver.exec_properties[resolver_lib.RESOLVER_CONFIG]
    assert wanted == {"model_size": "medium", "input_size": 64,
                      "class_names": json.loads(trainer.exec_properties["custom_config"])[
                                         "class_names"]}
    assert wanted["class_names"][:2] == ["circle", "square"]
    ir = compiler.Compiler().compile(pipeline)
    [channel] = _node_inputs(ir, "Trainer")["base_model"].channels
    assert channel.producer_node_query.id == "teacher_resolver"
    assert _node_inputs(ir, "Trainer")["base_model"].min_count == 0  # none yet: runs, explains


def test_a_teacher_path_is_imported(tmp_path, monkeypatch):
    export = tmp_path / "teacher" / "Format-Serving"
    export.mkdir(parents=True)
    (export / "saved_model.pb").write_bytes(b"")
    monkeypatch.chdir(tmp_path)  # a relative path is imported as an absolute one
    pipeline = _build(tmp_path, "train.teacher=./teacher")
    components = {c.id: c for c in pipeline.components}
    importer = components["teacher_importer"]
    assert importer.exec_properties[importer_lib.SOURCE_URI_KEY] == str(tmp_path / "teacher")
    assert components["Trainer"].inputs["base_model"] is importer.outputs["result"]
    assert "teacher_resolver" not in components
    assert "base_model" not in {c.id: c for c in _build(tmp_path).components}["Trainer"].inputs


@pytest.mark.parametrize("override, words", [
    ("train.teacher=mediun", "did you mean 'medium'"),
    ("train.teacher=/nowhere/teacher", "no saved_model.pb there or in its Format-Serving"),
    ("train.distill_weight=-1", "distill_weight=-1.0; must be > 0"),
])
def test_a_bad_teacher_fails_when_the_config_loads(override, words):
    with pytest.raises(ValueError, match="teacher|distill_weight") as error:
        configs.load("tiny", [override])
    assert words in str(error.value)


def test_kubeflow_asks_for_a_path_instead_of_a_size(tmp_path):
    config = configs.load("default", ["train.teacher=medium"])
    with pytest.raises(ValueError, match="give the teacher's export instead"):
        kubeflow_runner.compile_pipeline(config, str(tmp_path / "x.json"), "gs://b", "gs://b",
                                         "gs://b")


def test_a_run_without_a_recorded_teacher_stops_before_any_component(tmp_path):
    pipeline = _build(tmp_path, "train.teacher=medium")
    classes = json.loads(next(c for c in pipeline.components if c.id == "Trainer")
                         .exec_properties["custom_config"])["class_names"]
    small = {"model_size": "small", "input_size": 96, "class_names": classes}
    store = _store_with_models([small])
    with pytest.raises(ValueError, match="holds no 'medium' Model") as error:
        teacher.check_teacher(pipeline, store)
    assert "sightline run --set train.model_size=medium" in str(error.value)
    _store_with_models([{**small, "model_size": "medium"}], store=store)
    teacher.check_teacher(pipeline, store)  # found: the run goes ahead
    teacher.check_teacher(_build(tmp_path), store)  # no teacher: nothing to check


@pytest.mark.slow
def test_a_teacher_trained_once_is_reused_and_is_in_the_students_lineage(tmp_path):
    home, quiet = str(tmp_path), Console(quiet=True)
    settings = ["edge.enabled=false"]  # the edge branch has nothing to say about teachers
    student = configs.load("tiny", [*settings, "train.teacher=medium"])
    with pytest.raises(ValueError, match="sightline run --set train.model_size=medium"):
        local_runner.run(student, home, quiet)  # none recorded yet: stops before starting
    local_runner.run(configs.load("tiny", [*settings, "train.model_size=medium"]), home, quiet)
    local_runner.run(student, home, quiet)

    store = runs.connect(configs.Paths(home, student.pipeline_name).metadata)
    trainer_types = {t.id for t in store.get_execution_types() if t.name.endswith("Trainer")}
    first, second = sorted((e for e in store.get_executions() if e.type_id in trainer_types),
                           key=lambda e: e.id)
    events = store.get_events_by_execution_ids([first.id, second.id])
    model_type = store.get_artifact_type("Model").id

    def models(execution: pb.Execution, kind: int) -> list[pb.Artifact]:
        ids = [e.artifact_id for e in events if e.execution_id == execution.id
               and e.type == kind]
        return [a for a in store.get_artifacts_by_id(ids) if a.type_id == model_type]

    [medium], [small] = models(first, pb.Event.OUTPUT), models(second, pb.Event.OUTPUT)
    # The teacher Model is the student Trainer's input: the lineage names the teacher.
    assert [a.id for a in models(second, pb.Event.INPUT)] == [medium.id]
    assert medium.custom_properties["hparam_model_size"].string_value == "medium"
    recorded = small.custom_properties
    assert recorded["hparam_model_size"].string_value == "small"
    assert recorded["hparam_teacher"].string_value == "medium"
    assert recorded["hparam_teacher_uri"].string_value.startswith(medium.uri)
    assert recorded["hparam_final_distill_loss"].double_value > 0
