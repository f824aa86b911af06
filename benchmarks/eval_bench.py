"""Times the TFX Evaluator: the exact COCO metric versus TFMA 0.47's built-in COCO metrics.

    .venv/bin/python -m benchmarks.eval_bench                    # the default config
    .venv/bin/python -m benchmarks.eval_bench --config tiny      # a quick check
    .venv/bin/python -m benchmarks.eval_bench --num-thresholds 1000 --builtin-default-images 0

Both variants evaluate the same Model on the same Examples (the eval split) through the
real Evaluator executor (``tfx.components.evaluator.executor.Executor().Do``), with the
same model spec, slices and Beam settings; only the metrics differ:

* ``exact``: ``pipelines.pipeline.eval_config(...)``, the Evaluator's config in the
  pipeline: ``CocoDetectionMetrics`` (components/coco_eval, COCOeval's numbers) + gates;
* ``builtin``: the same EvalConfig with its metrics replaced by TFMA's
  ``COCOMeanAveragePrecision`` for mAP (IoU .5:.95) and mAP50 (IoU .5), fed from the same
  example features and model outputs (see ``builtin_metrics_spec``), with the same mAP
  floor. Their ``num_thresholds`` (score bins; TFMA's default is 10,000) is
  ``--num-thresholds``.

``--builtin-default-images N`` (default 2 on the default config) also times, on the first
N eval images, the built-in metric with TFMA's default thresholds, next to both variants on
the same N images: on the whole split it would take days (its cost is ~0.03-0.05 s per
threshold and image here). The default config takes ~30 minutes in all on a 2-core
AVX-512 CPU (~50 on an AVX2 one), ~17 of them the built-in metric with 100 thresholds on
the whole split, plus ~10 for the pipeline run when there is none yet.

The Model and Examples are those of the latest run of the config's pipeline in the
Sightline home (``--home``, default $SIGHTLINE_HOME or the repo's ``.sightline``, the home
``make run`` uses), read from ML Metadata; without one, the pipeline runs first. Each
measurement runs in its own Python process (same imports and model loading for both);
the seconds are those of ``Executor.Do``. Prints a table and writes
``benchmarks/results/eval_bench.json`` (``eval_bench-<config>.json`` for other configs).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from rich.console import Console
from rich.table import Table

from benchmarks import machine
from pipelines import configs

ROOT = pathlib.Path(__file__).resolve().parent.parent  # the repository
RESULTS_DIR = ROOT / "benchmarks" / "results"
EVAL_SPLIT = "eval"
IOU_THRESHOLDS = [round(0.5 + 0.05 * i, 2) for i in range(10)]  # COCO's .5:.05:.95
MAX_DETECTIONS = 100  # COCOeval's maxDets[-1]; the exact metric uses the same
DEFAULT_NUM_THRESHOLDS = 100
TFMA_DEFAULT_THRESHOLDS = 10_000  # COCOAveragePrecision's num_thresholds=None
# TFMA's default thresholds cost ~9 min per image of the default config here (~0.05 s per
# threshold and image, 2026-11-29): two images show the slowdown in ~18 minutes.
DEFAULT_SUBSET_IMAGES = 2
BUILTIN_MAP, BUILTIN_MAP50 = "mAP", "mAP50"
REPORTED = ("mAP", "mAP50")

# Wide enough for the table when the output goes to a file (rich assumes 80 columns there).
console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 150)


# --- the inputs: a run's Model, Examples and Schema, from ML Metadata -------------------

def find_inputs(home: str, config: configs.RunConfig) -> dict[str, Any] | None:
    """The Examples/Model/Schema artifacts of the latest run of the config's pipeline.

    Reads MLMD as ``pipelines/reports/runs.py`` does (run contexts newest first, artifacts from the
    executions' output events). None if no run of this pipeline produced a Model.
    """
    from pipelines.reports import runs

    paths = configs.Paths(home, config.pipeline_name)
    if not os.path.exists(paths.metadata):
        return None
    store = runs.connect(paths.metadata)
    for run in runs.list_runs(store):
        if run["pipeline"] != config.pipeline_name:
            continue
        artifacts = _run_outputs(store, run["run_id"])
        if {"Examples", "Model", "Schema"} <= artifacts.keys():
            summary = runs.summarize(store, run["run_id"])
            examples = runs.examples_record(artifacts["Examples"])
            evaluator = next((c for c in summary["components"]
                              if c["component"] == "Evaluator"), {})
            return {
                "run_id": run["run_id"],
                "run_status": run["status"],
                "examples_uri": examples["uri"],
                "split_names": sorted(examples["splits"]),
                "eval_images": examples["splits"].get(EVAL_SPLIT, {}).get("num_examples"),
                "model_uri": artifacts["Model"].uri,
                "model_id": artifacts["Model"].id,
                "schema_uri": artifacts["Schema"].uri,
                "pipeline_evaluator_seconds": evaluator.get("seconds"),
                "pipeline_overall": summary.get("evaluation", {}).get("overall", {}),
            }
    return None


def _run_outputs(store: Any, run_id: str) -> dict[str, Any]:
    """{artifact type name: artifact} of what a run's executions output (newest wins)."""
    from ml_metadata.proto import metadata_store_pb2

    from pipelines.reports import runs

    outputs = (metadata_store_pb2.Event.OUTPUT, metadata_store_pb2.Event.DECLARED_OUTPUT)
    run = runs.find_run(store, run_id)
    executions = store.get_executions_by_context(run.id)
    events = store.get_events_by_execution_ids([e.id for e in executions])
    ids = [e.artifact_id for e in events if e.type in outputs]
    artifacts = sorted(store.get_artifacts_by_id(ids), key=lambda a: a.id) if ids else []
    types = {t.id: t.name for t in store.get_artifact_types_by_id({a.type_id for a in artifacts})}
    return {types[a.type_id]: a for a in artifacts}


def ensure_inputs(home: str, config: configs.RunConfig, config_name: str) -> dict[str, Any]:
    """``find_inputs``, running the pipeline first when the home has no run of it."""
    inputs = find_inputs(home, config)
    if inputs is None:
        from pipelines import local_runner

        console.print(f"[bold]No {config.pipeline_name!r} run with a model in {home}: "
                      f"running the {config_name} pipeline first[/] (default config: ~8-11 min)")
        local_runner.run(config, home, console)
        inputs = find_inputs(home, config)
        if inputs is None:
            sys.exit(f"the {config_name} pipeline ran but MLMD in {home} has no model")
    return inputs


def subset_examples(examples_uri: str, num_images: int, out_dir: str) -> str:
    """A copy of the eval split with its first ``num_images`` examples (an Examples uri)."""
    import tensorflow as tf

    pattern = os.path.join(examples_uri, f"Split-{EVAL_SPLIT}", "*")
    records = tf.data.TFRecordDataset(tf.io.gfile.glob(pattern), compression_type="GZIP")
    split_dir = os.path.join(out_dir, f"Split-{EVAL_SPLIT}")
    os.makedirs(split_dir, exist_ok=True)
    options = tf.io.TFRecordOptions(compression_type="GZIP")
    with tf.io.TFRecordWriter(os.path.join(split_dir, "data_tfrecord-00000-of-00001.gz"),
                              options) as writer:
        for record in records.take(num_images):
            writer.write(record.numpy())
    return out_dir


# --- the two EvalConfigs -----------------------------------------------------------------

def exact_eval_config(config: configs.RunConfig) -> Any:
    """The pipeline's own Evaluator config, from ``pipelines.pipeline.eval_config``."""
    from pipelines import pipeline
    from schemas.curate import class_names

    return pipeline.eval_config(class_names(config.data.schema_path), config.gates)


def builtin_metrics_spec(class_names: list[str], num_thresholds: int | None,
                         map_thresholds: list[Any]) -> Any:
    """TFMA's COCO mAP and mAP50, fed like the exact metric.

    * labels: the example's features stacked per object as the box in ``data.boxes.YXYX``
      order and the 1-based class; predictions: the model's ``detection_boxes`` (YXYX),
      ``detection_classes`` and ``detection_scores``, cut to the integer ``num_detections``
      real rows. TFMA names the columns left, top, right, bottom, but IoU and area do not
      change when x and y swap, so feeding both sides in YXYX order is exact;
    * class_ids 1..C (the label space), COCO's 10 IoU thresholds (mAP) or IoU .5 (mAP50),
      the default 101 recall points, ``max_num_detections`` 100 (COCOeval's maxDets, per
      image and class in both), all areas. ``num_thresholds`` None is TFMA's default.
    """
    import tensorflow_model_analysis as tfma

    from data import feature_spec as fs

    common: dict[str, Any] = {
        "class_ids": list(range(1, len(class_names) + 1)),
        "max_num_detections": MAX_DETECTIONS,
        "labels_to_stack": [*fs.BOX_KEYS, fs.CLASS_LABEL],
        "predictions_to_stack": [fs.DETECTION_BOXES, fs.DETECTION_CLASSES,
                                 fs.DETECTION_SCORES],
        "num_detections_key": fs.NUM_DETECTIONS,
    }
    if num_thresholds is not None:
        common["num_thresholds"] = num_thresholds
    return tfma.MetricsSpec(metrics=[
        tfma.MetricConfig(
            class_name="COCOMeanAveragePrecision",
            config=json.dumps({**common, "name": BUILTIN_MAP, "iou_thresholds": IOU_THRESHOLDS}),
            per_slice_thresholds=map_thresholds,
        ),
        # Its IoU .5 computations are the mAP's: TFMA computes them once.
        tfma.MetricConfig(
            class_name="COCOMeanAveragePrecision",
            config=json.dumps({**common, "name": BUILTIN_MAP50, "iou_thresholds": [0.5]}),
        ),
        tfma.MetricConfig(class_name="ExampleCount"),
    ])


def builtin_eval_config(exact: Any, class_names: list[str], num_thresholds: int | None) -> Any:
    """The exact config (model spec, slices) with TFMA's built-in COCO metrics instead.

    The mAP floor moves over to the built-in mAP; the per-slice ``slice_mAP`` gate has no
    built-in counterpart (and change gates are dropped without a baseline anyway).
    """
    import tensorflow_model_analysis as tfma

    from pipelines import pipeline

    map_thresholds = [
        threshold
        for spec in exact.metrics_specs for metric in spec.metrics
        if metric.module == pipeline.COCO_METRICS_MODULE
        for threshold in metric.per_slice_thresholds
    ]
    config = tfma.EvalConfig()
    config.CopyFrom(exact)
    del config.metrics_specs[:]
    config.metrics_specs.append(builtin_metrics_spec(class_names, num_thresholds, map_thresholds))
    return config


# --- one measurement, in a child process ---------------------------------------------------

def measure(name: str, eval_config: Any, inputs: dict[str, Any], examples_uri: str,
            beam_args: list[str], work: str) -> dict[str, Any]:
    """Runs the Evaluator in a fresh Python process; its ``Do`` seconds and overall metrics."""
    from google.protobuf import json_format

    job_dir = os.path.join(work, name)
    os.makedirs(job_dir, exist_ok=True)
    job = {
        "eval_config": json_format.MessageToJson(eval_config),
        "examples_uri": examples_uri,
        "split_names": inputs["split_names"] if examples_uri == inputs["examples_uri"]
        else [EVAL_SPLIT],
        "model_uri": inputs["model_uri"],
        "model_id": inputs["model_id"],
        "schema_uri": inputs["schema_uri"],
        "beam_args": beam_args,
        "out_dir": job_dir,
    }
    job_file = os.path.join(job_dir, "job.json")
    pathlib.Path(job_file).write_text(json.dumps(job))
    log_file = os.path.join(job_dir, "log.txt")
    console.print(f"  {name} ...", end="")
    started = time.monotonic()
    with open(log_file, "w") as log:
        done = subprocess.run([sys.executable, "-m", "benchmarks.eval_bench", "--worker",
                               job_file],
                              stdout=log, stderr=subprocess.STDOUT, cwd=str(ROOT))
    if done.returncode != 0:
        sys.exit(f"\n{name} failed:\n{pathlib.Path(log_file).read_text()[-5000:]}")
    result = json.loads(pathlib.Path(job_dir, "result.json").read_text())
    result["process_seconds"] = round(time.monotonic() - started, 1)
    console.print(f" {result['evaluator_seconds']:.1f} s (process {result['process_seconds']} s)")
    return result


def worker(job_file: str) -> None:
    """Child process: builds the artifacts, times ``Executor().Do`` and reads the metrics."""
    import tensorflow_model_analysis as tfma
    from tfx.components.evaluator import executor as evaluator_executor
    from tfx.types import artifact_utils, standard_artifacts, standard_component_specs

    from components.coco_eval import results as eval_results

    job = json.loads(pathlib.Path(job_file).read_text())
    examples = standard_artifacts.Examples()
    examples.uri = job["examples_uri"]
    examples.split_names = artifact_utils.encode_split_names(job["split_names"])
    model = standard_artifacts.Model()
    model.uri = job["model_uri"]
    model.id = job["model_id"]
    schema = standard_artifacts.Schema()
    schema.uri = job["schema_uri"]
    evaluation = standard_artifacts.ModelEvaluation()
    evaluation.uri = os.path.join(job["out_dir"], "evaluation")
    blessing = standard_artifacts.ModelBlessing()
    blessing.uri = os.path.join(job["out_dir"], "blessing")
    for uri in (evaluation.uri, blessing.uri):
        os.makedirs(uri, exist_ok=True)
    keys = standard_component_specs
    context = evaluator_executor.Executor.Context(
        beam_pipeline_args=job["beam_args"], tmp_dir=os.path.join(job["out_dir"], "tmp"),
        unique_id="eval-bench")
    executor = evaluator_executor.Executor(context)
    started = time.perf_counter()
    executor.Do(
        input_dict={keys.EXAMPLES_KEY: [examples], keys.MODEL_KEY: [model],
                    keys.SCHEMA_KEY: [schema]},
        output_dict={keys.EVALUATION_KEY: [evaluation], keys.BLESSING_KEY: [blessing]},
        exec_properties={keys.EVAL_CONFIG_KEY: job["eval_config"]},
    )
    seconds = time.perf_counter() - started
    loaded = eval_results.load_metrics(evaluation.uri)[eval_results.CANDIDATE]
    overall = loaded.get(eval_results.OVERALL, {})
    validation = tfma.load_validation_result(evaluation.uri)
    result = {
        "evaluator_seconds": round(seconds, 2),
        "images": int(overall.get("example_count", -1)),
        "slices": len(loaded),
        **{k: overall.get(k) for k in REPORTED},
        "blessed": bool(validation.validation_ok),
    }
    pathlib.Path(job["out_dir"], "result.json").write_text(json.dumps(result))


# --- the benchmark -------------------------------------------------------------------------

def _ratio(slow: dict[str, Any], fast: dict[str, Any]) -> float:
    return round(slow["evaluator_seconds"] / fast["evaluator_seconds"], 2)


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="default", help="pipeline config (default, tiny)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="RunConfig field=value for the pipeline run, as `sightline run`")
    parser.add_argument("--home", default=None,
                        help="Sightline home (default $SIGHTLINE_HOME or <repo>/.sightline)")
    parser.add_argument("--num-thresholds", type=int, default=DEFAULT_NUM_THRESHOLDS,
                        help="score thresholds of the built-in metric (TFMA default: 10000)")
    parser.add_argument("--builtin-default-images", type=int, default=None,
                        help="also time all variants and the built-in with TFMA's default "
                             f"thresholds on this many eval images (0: skip; default "
                             f"{DEFAULT_SUBSET_IMAGES} on the default config, else 0)")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.builtin_default_images is None:
        args.builtin_default_images = DEFAULT_SUBSET_IMAGES if args.config == "default" else 0
    return args


def _measure_all(args: argparse.Namespace, inputs: dict[str, Any], exact: Any,
                 class_names: list[str], beam_args: list[str]) -> dict[str, dict[str, Any]]:
    """Every measurement, by key: "full/exact", "full/builtin" and the "subset/..." ones."""
    measured: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="eval-bench-") as work:
        def run(key: str, variant: str, eval_config: Any, examples_uri: str,
                thresholds: int | None) -> None:
            scope = key.split("/")[0]
            name = f"{variant}-{scope}-{thresholds or 'na'}"
            result = measure(name, eval_config, inputs, examples_uri, beam_args, work)
            measured[key] = {"variant": variant, "scope": scope,
                             "num_thresholds": thresholds, **result}

        full = inputs["examples_uri"]
        builtin = builtin_eval_config(exact, class_names, args.num_thresholds)
        console.print("Full eval split:")
        run("full/exact", "exact", exact, full, None)
        run("full/builtin", "builtin", builtin, full, args.num_thresholds)
        if args.builtin_default_images > 0:
            n = args.builtin_default_images
            console.print(f"First {n} eval images:")
            uri = subset_examples(full, n, os.path.join(work, "subset-examples"))
            run("subset/exact", "exact", exact, uri, None)
            run("subset/builtin", "builtin", builtin, uri, args.num_thresholds)
            run("subset/builtin_default", "builtin", builtin_eval_config(
                exact, class_names, None), uri, TFMA_DEFAULT_THRESHOLDS)
    return measured


def _ratios(measured: dict[str, dict[str, Any]]) -> dict[str, float]:
    ratios = {"builtin_over_exact_full": _ratio(measured["full/builtin"],
                                                measured["full/exact"])}
    if "subset/exact" in measured:
        exact, builtin = measured["subset/exact"], measured["subset/builtin"]
        default = measured["subset/builtin_default"]
        ratios.update({
            "builtin_over_exact_subset": _ratio(builtin, exact),
            "builtin_default_over_exact_subset": _ratio(default, exact),
            "builtin_default_over_builtin_subset": _ratio(default, builtin),
        })
    return ratios


def main() -> None:
    args = _arguments()
    if args.worker:
        worker(args.worker)
        return
    home = configs.home_dir(args.home or os.environ.get(configs.HOME_ENV)
                            or str(ROOT / configs.DEFAULT_HOME))
    config = configs.load(args.config, args.overrides)
    inputs = ensure_inputs(home, config, args.config)
    from schemas.curate import class_names as schema_class_names

    class_names = schema_class_names(config.data.schema_path)
    exact = exact_eval_config(config)
    beam_args = config.beam.pipeline_args()
    console.print(f"Evaluator benchmark: {config.pipeline_name} run {inputs['run_id']} "
                  f"({inputs['run_status']}) in {home}; model {inputs['model_uri']}; "
                  f"{inputs['eval_images']} eval images; Beam {' '.join(beam_args)}")
    measured = _measure_all(args, inputs, exact, class_names, beam_args)
    exact_full, builtin_full = measured["full/exact"], measured["full/builtin"]
    report = {
        "config": args.config, "overrides": args.overrides, "machine": machine.describe(),
        "home": home, "run_id": inputs["run_id"], "model_uri": inputs["model_uri"],
        "examples_uri": inputs["examples_uri"], "eval_images": inputs["eval_images"],
        "beam_pipeline_args": beam_args, "num_thresholds": args.num_thresholds,
        "builtin_default_images": args.builtin_default_images,
        "builtin_config": json.loads(builtin_eval_config(
            exact, class_names, args.num_thresholds).metrics_specs[0].metrics[0].config),
        "pipeline_evaluator_seconds": inputs["pipeline_evaluator_seconds"],
        "pipeline_overall": {k: inputs["pipeline_overall"].get(k) for k in REPORTED},
        "results": list(measured.values()),
        "ratios": _ratios(measured),
        "exact_not_slower": exact_full["evaluator_seconds"] <= builtin_full["evaluator_seconds"],
    }
    _print_table(report)
    out = pathlib.Path(args.out) if args.out else RESULTS_DIR / (
        "eval_bench.json" if args.config == "default" else f"eval_bench-{args.config}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    console.print(f"wrote {out}")
    if not report["exact_not_slower"]:
        sys.exit("the exact metric must not be slower than TFMA's built-in one, but it was")


def _metric_name(row: dict[str, Any]) -> str:
    if row["variant"] == "exact":
        return "CocoDetectionMetrics (exact COCOeval)"
    thresholds = row["num_thresholds"]
    default = " (TFMA default)" if thresholds == TFMA_DEFAULT_THRESHOLDS else ""
    return f"COCOMeanAveragePrecision, {thresholds:,} thresholds{default}"


def _print_table(report: dict[str, Any]) -> None:
    table = Table("variant", "metric", "Evaluator s", "images", "slices", "mAP", "mAP50",
                  title=f"TFX Evaluator, config {report['config']}, run {report['run_id']}, "
                        f"{machine.summary(report['machine'])}")
    for row in report["results"]:
        table.add_row(
            f"{row['variant']} ({row['scope']})", _metric_name(row),
            f"{row['evaluator_seconds']:.1f}", str(row["images"]), str(row["slices"]),
            *(f"{row[k]:.4f}" if row[k] is not None else "-" for k in REPORTED))
    console.print(table)
    ratios = report["ratios"]
    ok = "[green]OK[/]" if report["exact_not_slower"] else "[red]VIOLATED[/]"
    console.print(f"built-in / exact Evaluator seconds (full split): "
                  f"{ratios['builtin_over_exact_full']}x -- the exact metric must not be "
                  f"slower: {ok}")
    if "builtin_default_over_exact_subset" in ratios:
        console.print(
            f"on {report['builtin_default_images']} images: built-in "
            f"{report['num_thresholds']:,} thresholds / exact "
            f"{ratios['builtin_over_exact_subset']}x; TFMA default thresholds / exact "
            f"{ratios['builtin_default_over_exact_subset']}x; default / "
            f"{report['num_thresholds']:,} thresholds "
            f"{ratios['builtin_default_over_builtin_subset']}x")
    if report["pipeline_evaluator_seconds"] is not None:
        console.print(f"(the pipeline run's own Evaluator step, from MLMD: "
                      f"{report['pipeline_evaluator_seconds']} s, overall "
                      f"{report['pipeline_overall']})")


if __name__ == "__main__":
    main()
