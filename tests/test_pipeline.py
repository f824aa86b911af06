"""The real DAG on tiny data: LocalDagRunner, Beam DirectRunner, MLMD in SQLite."""

from __future__ import annotations

import json
import os

import pytest
from rich.console import Console

from pipelines import configs, kubeflow_runner, local_runner
from pipelines.reports import evaluation as report
from pipelines.reports import runs
from trainer import export

PIPELINE_COMPONENTS = {
    "CocoExampleGen", "StatisticsGen", "ImportSchemaGen", "ExampleValidator", "AnomalyGate",
    "Trainer", "Evaluator", "Pusher", "EdgeOptimizer", "EdgePusher",
}


def _run(home: str, *overrides: str) -> tuple[dict, Exception | None]:
    config = configs.load("tiny", overrides)
    error = None
    try:
        local_runner.run(config, home, Console(quiet=True))
    except Exception as e:  # the summary must explain it
        error = e
    store = runs.connect(configs.Paths(home, config.pipeline_name).metadata)
    return runs.summarize(store), error


def test_whole_dag_pushes_a_model(tiny_run):
    home, summary = tiny_run
    assert summary["status"] == "succeeded"
    assert {c["component"] for c in summary["components"]} >= PIPELINE_COMPONENTS
    assert all(c["status"] == "complete" for c in summary["components"])
    splits = summary["examples"]["splits"]
    assert splits["train"]["num_examples"] + splits["eval"]["num_examples"] == 48
    assert all(len(s["content_hash"]) == 64 for s in splits.values())
    assert "mAP" in summary["evaluation"]["overall"]
    slices = summary["evaluation"]["slices"]
    assert {name.split("=")[0] for name in slices} == {"meta/camera", "meta/lighting"}
    assert "meta/lighting=day" in slices  # readable values, not b'day'
    assert all(s["example_count"] >= 1 for s in slices.values())
    pushed = summary["pushed"]  # the tiny preset's floor is 0: test_gates tests the gates
    assert pushed["pushed"]
    version_dir = os.path.join(configs.Paths(home, "sightline-tiny").serving_model_dir,
                               pushed["version"])
    assert os.path.isfile(os.path.join(version_dir, "saved_model.pb"))


def test_edge_variants_are_recorded_and_a_bundle_is_pushed(tiny_run):
    home, summary = tiny_run
    variants = summary["edge_variants"]
    assert set(variants) == {"float32", "fp16", "ptq_int8", "qat_int8"}
    for name, variant in variants.items():
        assert os.path.getsize(os.path.join(variant["uri"], "model.tflite")) == \
            variant["size_bytes"], name
    assert variants["qat_int8"]["size_bytes"] < variants["float32"]["size_bytes"] / 3
    edge = summary["edge_push"]
    assert edge["pushed"] and edge["variant"] in variants
    assert edge["reason"].startswith("qat_int8: mAP")  # every try is explained
    bundle = os.path.join(configs.Paths(home, "sightline-tiny").edge_bundle_dir,
                          edge["version"])
    assert sorted(os.listdir(bundle)) == ["input_spec.json", "labels.txt", "metadata.json",
                                          "model.tflite", "thresholds.json"]
    with open(os.path.join(bundle, "metadata.json")) as f:
        metadata = json.load(f)
    assert metadata["variant"] == edge["variant"]
    assert metadata["dataset"] == summary["examples"]["splits"]


def test_lineage_reaches_the_examples_hashes(tiny_run):
    home, summary = tiny_run
    store = runs.connect(configs.Paths(home, "sightline-tiny").metadata)
    record = runs.lineage(store, summary["pushed"]["version"])
    assert [e["splits"] for e in record["examples"]] == [summary["examples"]["splits"]]
    executions = {edge["execution"] for edge in record["edges"]}
    assert {"Pusher", "Trainer", "Evaluator"} <= executions
    trainer_inputs = [(e["from_type"], e["from_artifact"], e["to_type"]) for e in record["edges"]
                      if e["execution"] == "Trainer" and e["input"] == "examples"]
    assert trainer_inputs == [("Examples", record["examples"][0]["artifact_id"], "Model")]


def test_runs_show_repeats_the_run_summary(tiny_run):
    from click.testing import CliRunner

    from pipelines.cli import main

    home, summary = tiny_run
    result = CliRunner().invoke(main, ["runs", "show", "latest", "--json", "--home", home])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["run_id"] == summary["run_id"] and shown["pushed"] == summary["pushed"]


def test_model_artifact_records_the_exported_hparams(tiny_run):
    from click.testing import CliRunner
    from tfx.utils import path_utils

    from pipelines.cli import main

    home, summary = tiny_run
    store = runs.connect(configs.Paths(home, "sightline-tiny").metadata)
    [model] = store.get_artifacts_by_id([summary["model"]["artifact_id"]])
    model_dir = path_utils.serving_model_path(model.uri)
    with open(os.path.join(model_dir, export.ASSETS_EXTRA, export.HPARAMS_FILE)) as f:
        hparams = json.load(f)
    custom = model.custom_properties
    assert custom["hparam_input_size"].int_value == hparams["input_size"]
    assert custom["hparam_seed"].int_value == hparams["seed"]
    assert custom["hparam_learning_rate"].double_value == hparams["learning_rate"]
    assert json.loads(custom["hparam_class_names"].string_value) == hparams["class_names"]
    # What the run took: its steps, step time, seconds and compute precision.
    assert custom["hparam_train_steps"].int_value == hparams["train_steps"] > 0
    assert custom["hparam_step_seconds"].double_value == hparams["step_seconds"]
    assert custom["hparam_train_seconds"].double_value == hparams["train_seconds"] > 0
    assert custom["hparam_compute_precision"].string_value in ("float32", "bfloat16")
    assert custom["hparam_time_budget_s"].double_value == 0.0  # the tiny config has none
    assert set(summary["model"]["hparams"]) == set(hparams)  # what `runs show --json` reports
    result = CliRunner().invoke(main, ["runs", "show", "latest", "--home", home])
    assert result.exit_code == 0, result.output
    assert f"input_size={hparams['input_size']}" in result.output


@pytest.mark.slow
def test_schema_anomaly_stops_the_run_before_training(tmp_path):
    summary, error = _run(str(tmp_path), "data.synthetic.scenario=unknown_class")
    assert error is not None
    assert summary["status"] == "failed"
    ran = {c["component"]: c["status"] for c in summary["components"]}
    assert ran["AnomalyGate"] == "failed"
    assert "Trainer" not in ran  # stopped before training
    failure = summary["failure"]
    assert failure["component"] == "AnomalyGate"
    assert "image/object/class/label" in failure["error"]
    assert "hexagon" in failure["error"]
    with pytest.raises(report.NoEvaluationError, match="stopped at AnomalyGate"):
        report.build(summary)


def test_kubeflow_compile_names_every_component(tmp_path):
    output = str(tmp_path / "sightline.json")
    kubeflow_runner.compile_pipeline(
        configs.load("default"), output, "gs://bucket/root", "gs://bucket/data",
        "gs://bucket/serving",
    )
    with open(output) as f:
        spec = json.load(f)
    tasks = spec["pipelineSpec"]["root"]["dag"]["tasks"]
    assert PIPELINE_COMPONENTS <= set(tasks)
    assert "AnomalyGate" in tasks["Trainer"]["dependentTasks"]


def test_image_settings_reach_coco_example_gen(tmp_path):
    config = configs.load("tiny", ["data.images_root=train", "data.allow_absolute_paths=true"])
    pipeline = local_runner.build(config, configs.Paths(str(tmp_path), config.pipeline_name),
                                  str(tmp_path / "data"))
    [example_gen] = [c for c in pipeline.components if c.id == "CocoExampleGen"]
    assert example_gen.exec_properties["images_root"] == "train"
    assert example_gen.exec_properties["allow_absolute_paths"] == 1


def test_kubeflow_rejects_invalid_pipeline_names(tmp_path):
    config = configs.load("default", ["pipeline_name=my_pipeline"])
    with pytest.raises(ValueError, match="not a valid Kubeflow name"):
        kubeflow_runner.compile_pipeline(config, str(tmp_path / "x.json"), "gs://b", "gs://b",
                                         "gs://b")
