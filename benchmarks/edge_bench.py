"""The edge trade-off table: size, latency, accuracy and calibration per model variant.

    .venv/bin/python -m benchmarks.edge_bench                  # trains the default model first
    .venv/bin/python -m benchmarks.edge_bench --model DIR      # an exported SavedModel
    .venv/bin/python -m benchmarks.edge_bench --profile --model DIR --examples DIR \
        --baseline REV                                        # EdgeOptimizer seconds

Without ``--model`` the default ``small`` detector is trained on the default dataset with
the default budget (``train_bench``'s data and ``train()``, ~7 min). The variants are
built by the EdgeOptimizer's own code (QAT fine-tune, conversion) and scored by its
evaluation (the Evaluator's exact COCO metric on the eval split), so the table is what
the pipeline records. One row per variant: file size, latency p50/p99 at batch 1 with 1
and 2 threads (TFLite with XNNPACK via ai-edge-litert; the SavedModel row is TensorFlow
with that many intra-op threads), mAP, mAP50 and D-ECE. A conv probe measures this
CPU's int8 vs float32 XNNPACK throughput on a plain 3x3 conv stack, which bounds what
int8 can gain here. Prints a table; writes ``benchmarks/results/edge_bench.json``.

``--profile`` instead times the EdgeOptimizer executor itself (``Executor.Do`` on a
Model and an Examples artifact, in a fresh process per run) with its stage breakdown
(``Stages``). With ``--baseline REV`` the same runs use that git revision's code too,
interleaved (baseline, current, baseline, ...) so both see the same machine load, and
the bench checks that both wrote identical metrics and TFLite files. ``--examples`` is
an Examples artifact directory (``Split-train/``, ``Split-eval/``, e.g. a pipeline
home's ``CocoExampleGen/examples/<id>``); default: the bench dataset. Writes
``benchmarks/results/edge_profile.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf
import tf_keras as keras
from ai_edge_litert.interpreter import Interpreter

from benchmarks import machine
from benchmarks.report import write_report
from benchmarks.train_bench import bench_data, train_and_export
from components.coco_eval import results
from components.coco_eval.offline import example_features, read_examples
from components.edge_optimizer.executor import (
    EVALUATION_FILE,
    EVALUATION_KEY,
    MIN_SLICE_IMAGES_KEY,
    OUTPUT_KEYS,
    QAT_EPOCHS_KEY,
    QAT_LEARNING_RATE_KEY,
    REPRESENTATIVE_KEY,
    SAVED_MODEL,
    SLICE_KEYS_KEY,
    TFLITE_FILE,
    build_variants,
    evaluate_variants,
)
from data import feature_spec as fs
from data import synth
from pipelines import configs
from serving.edge_preprocess import preprocess_image
from serving.tflite_runner import TFLiteDetector
from trainer.config import TrainConfig
from trainer.export import load_detector

ROOT = pathlib.Path(__file__).resolve().parent.parent  # the repository
RESULTS_DIR = ROOT / "benchmarks" / "results"
WARMUP, RUNS = 20, 300
THREADS = (1, 2)
PROBE = (64, 64, 6)  # conv probe: side, channels, layers of 3x3 convs


def _percentiles(seconds: list[float]) -> dict[str, float]:
    ms = 1000 * np.asarray(seconds)
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3),
            "p99_ms": round(float(np.percentile(ms, 99)), 3)}


def _time(fn) -> dict[str, float]:
    for _ in range(WARMUP):
        fn()
    seconds = []
    for _ in range(RUNS):
        started = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - started)
    return _percentiles(seconds)


def tflite_latency(path: str, image: np.ndarray, threads: int) -> dict[str, float]:
    """Batch-1 latency of one variant (the model with its decode; input already resized)."""
    detector = TFLiteDetector(path, num_threads=threads)
    return _time(lambda: detector.detect_image(image))


def saved_model_latency(serving_dir: str, threads: int) -> dict[str, float]:
    """The float SavedModel's detector + decode at batch 1 in a fresh TF process.

    TensorFlow fixes its thread pools at start-up, so each thread count is its own process.
    """
    code = (
        "import json, sys; from benchmarks.edge_bench import _time; import tensorflow as tf;"
        "from trainer.export import load_detector;"
        "from trainer.decode import decode_detections;"
        "det, cfg = load_detector(sys.argv[1]); s = cfg.input_size;"
        "f = tf.function(lambda x: decode_detections(det(x, training=False), "
        "cfg.max_detections));"
        "x = tf.random.stateless_uniform((1, s, s, 3), (1, 2));"
        "print(json.dumps(_time(lambda: [v.numpy() for v in f(x).values()])))"
    )
    env = {**os.environ, "TF_NUM_INTRAOP_THREADS": str(threads), "TF_NUM_INTEROP_THREADS": "1"}
    # `python -c` imports from its working directory, so it runs in the repository.
    out = subprocess.run([sys.executable, "-c", code, serving_dir, str(threads)], cwd=str(ROOT),
                         env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def conv_probe(work: str) -> dict[str, float]:
    """int8 vs float32 XNNPACK p50 on the same 3x3 conv stack, 1 thread."""
    side, channels, layers = PROBE
    inputs = x = keras.Input((side, side, channels))
    for _ in range(layers):
        x = keras.layers.Conv2D(channels, 3, padding="same", activation="relu")(x)
    model = keras.Model(inputs, x)
    rng = np.random.default_rng(0)
    times = {}
    for kind in ("float32", "int8"):
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        if kind == "int8":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = lambda: (
                [rng.random((1, side, side, channels), dtype=np.float32)] for _ in range(8))
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = converter.inference_output_type = tf.int8
        path = os.path.join(work, f"probe-{kind}.tflite")
        pathlib.Path(path).write_bytes(converter.convert())
        interpreter = Interpreter(model_path=path, num_threads=1)
        interpreter.allocate_tensors()
        times[kind] = _time(interpreter.invoke)["p50_ms"]
    gflop = 2 * layers * side * side * 9 * channels * channels / 1e9
    return {"gflop": round(gflop, 3), "float32_ms": times["float32"], "int8_ms": times["int8"],
            "int8_speedup": round(times["float32"] / times["int8"], 2)}


def _dir_bytes(path: str) -> int:
    return sum(f.stat().st_size for f in pathlib.Path(path).rglob("*") if f.is_file())


def _variant_rows(serving_dir: str, paths: dict[str, str], scores: dict, sizes: dict,
                  image: Any) -> list[dict[str, Any]]:
    """Size, latency at each thread count and accuracy per variant, SavedModel first."""
    rows = []
    for name in (SAVED_MODEL, *paths):
        overall = scores[name][results.OVERALL]
        row = {"variant": name, "size_bytes": sizes[name]}
        for threads in THREADS:
            latency = (saved_model_latency(serving_dir, threads) if name == SAVED_MODEL
                       else tflite_latency(paths[name], image, threads))
            row.update({f"{k}_{threads}t": v for k, v in latency.items()})
        row.update({k: round(overall[k], 4) for k in ("mAP", "mAP50", "D-ECE")})
        rows.append(row)
    return rows


def _summary(rows: list[dict[str, Any]]) -> dict[str, float]:
    float_row = next(r for r in rows if r["variant"] == "float32")
    qat_row = next(r for r in rows if r["variant"] == "qat_int8")
    saved_row = rows[0]
    return {
        "qat_int8_smaller_than_float32_tflite": round(float_row["size_bytes"]
                                                      / qat_row["size_bytes"], 2),
        "qat_int8_smaller_than_saved_model": round(saved_row["size_bytes"]
                                                   / qat_row["size_bytes"], 2),
        "qat_int8_speedup_1t": round(float_row["p50_ms_1t"] / qat_row["p50_ms_1t"], 2),
        "qat_int8_map_change_points": round(100 * (qat_row["mAP"] - saved_row["mAP"]), 2),
    }


# Runs the EdgeOptimizer executor of the code in the working directory (any revision:
# only the component's keys and TFX's artifact API are used) and prints its seconds.
_RUN_EXECUTOR = """
import json, os, sys, time
from tfx.types import standard_artifacts
from components.edge_optimizer import component, executor as ex
model_uri, examples_uri, out, properties = sys.argv[1:5]
def artifact(kind, uri):
    a = kind(); a.uri = uri; return a
examples = artifact(standard_artifacts.Examples, examples_uri)
examples.split_names = '["train", "eval"]'
inputs = {ex.MODEL_KEY: [artifact(standard_artifacts.Model, model_uri)],
          ex.EXAMPLES_KEY: [examples]}
outputs = {key: [artifact(component.TFLiteModel, os.path.join(out, key))]
           for key in ex.OUTPUT_KEYS.values()}
outputs[ex.EVALUATION_KEY] = [artifact(component.EdgeEvaluation,
                                       os.path.join(out, ex.EVALUATION_KEY))]
started = time.perf_counter()
ex.Executor().Do(inputs, outputs, json.loads(properties))
print(json.dumps({"seconds": time.perf_counter() - started}))
"""


def _checkout(revision: str, work: str) -> str:
    """The tree of ``revision`` extracted into ``work`` (the repository is left alone)."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision], check=True,
                             capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(work, filter="data")
    return work


def run_executor(code_dir: str, model_uri: str, examples_uri: str, out: str,
                 properties: dict[str, Any]) -> dict[str, Any]:
    """One ``Executor.Do`` of ``code_dir``'s EdgeOptimizer in a fresh process.

    Returns its wall seconds, its ``Stages`` (if that revision records them), the
    evaluation's metrics and each variant's flatbuffer.
    """
    env = {**os.environ, "PYTHONPATH": code_dir}  # before the venv's editable install
    run = subprocess.run([sys.executable, "-c", _RUN_EXECUTOR, model_uri, examples_uri, out,
                          json.dumps(properties)], cwd=code_dir, env=env, check=True,
                         capture_output=True, text=True)
    seconds = json.loads(run.stdout.strip().splitlines()[-1])["seconds"]
    evaluation = json.loads(pathlib.Path(out, EVALUATION_KEY, EVALUATION_FILE).read_text())
    flatbuffers = {variant: pathlib.Path(out, key, TFLITE_FILE).read_bytes()
                   for variant, key in OUTPUT_KEYS.items()}
    return {"seconds": seconds, "stages": evaluation.get("seconds", {}),
            "metrics": evaluation["metrics"], "flatbuffers": flatbuffers}


def profile(args: argparse.Namespace, serving_dir: str, examples_uri: str, work: str
            ) -> dict[str, Any]:
    """EdgeOptimizer seconds and stages per code version (``--baseline`` and current)."""
    model_uri = os.path.join(work, "model")  # a Model artifact: <uri>/Format-Serving
    os.makedirs(model_uri)
    os.symlink(os.path.abspath(serving_dir), os.path.join(model_uri, "Format-Serving"))
    properties = {QAT_EPOCHS_KEY: args.qat_epochs, QAT_LEARNING_RATE_KEY: args.qat_learning_rate,
                  REPRESENTATIVE_KEY: args.representative_examples,
                  SLICE_KEYS_KEY: json.dumps(list(fs.META_KEYS)), MIN_SLICE_IMAGES_KEY: 20}
    versions = {"current": str(ROOT)}
    if args.baseline:
        versions = {"baseline": _checkout(args.baseline, os.path.join(work, "baseline")),
                    **versions}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in versions}
    for repeat in range(args.repeats):
        for name, code_dir in versions.items():
            out = os.path.join(work, f"{name}-{repeat}")
            runs[name].append(run_executor(code_dir, model_uri, examples_uri, out, properties))
            print(f"{name} run {repeat + 1}: {runs[name][-1]['seconds']:.1f} s", flush=True)
    first = runs[next(iter(versions))][0]
    same = {name: {"metrics": all(r["metrics"] == first["metrics"] for r in version_runs),
                   "flatbuffers": {v: all(r["flatbuffers"][v] == b for r in version_runs)
                                   for v, b in first["flatbuffers"].items()}}
            for name, version_runs in runs.items()}
    stage_names = list(dict.fromkeys(s for rs in runs.values() for r in rs for s in r["stages"]))
    return {
        "baseline": args.baseline, "repeats": args.repeats,
        "seconds": {name: [round(r["seconds"], 1) for r in rs] for name, rs in runs.items()},
        "median_seconds": {name: round(statistics.median(r["seconds"] for r in rs), 1)
                           for name, rs in runs.items()},
        "stages": {stage: {name: round(statistics.median(r["stages"][stage] for r in rs), 1)
                           for name, rs in runs.items() if stage in rs[0]["stages"]}
                   for stage in stage_names},
        "same_as_first_run": same,
        "mAP": {name: {m: s[results.OVERALL]["mAP"] for m, s in rs[0]["metrics"].items()}
                for name, rs in runs.items()},
    }


def _print_profile(report: dict[str, Any]) -> None:
    names = list(report["seconds"])
    print(" | ".join(("stage (median s)", *names)))
    for stage, by_name in report["stages"].items():
        print(" | ".join((stage, *(str(by_name.get(n, "-")) for n in names))))
    print(" | ".join(("EdgeOptimizer Do()", *(str(report["median_seconds"][n]) for n in names))))
    print(" | ".join(("EdgeOptimizer Do(), each run", *(str(report["seconds"][n]) for n in names))))
    for name, same in report["same_as_first_run"].items():
        print(f"{name}: metrics identical to {names[0]}'s first run: {same['metrics']}; "
              f"TFLite files identical: {same['flatbuffers']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="exported SavedModel dir (default: train one)")
    parser.add_argument("--profile", action="store_true",
                        help="time the EdgeOptimizer executor and its stages instead")
    parser.add_argument("--examples", help="--profile: an Examples artifact dir "
                                           "(default: the bench dataset)")
    parser.add_argument("--baseline", help="--profile: also run this git revision's code")
    parser.add_argument("--repeats", type=int, default=1, help="--profile: runs per version")
    parser.add_argument("--qat-epochs", type=int, default=configs.RunConfig().edge.qat_epochs)
    parser.add_argument("--qat-learning-rate", type=float,
                        default=configs.RunConfig().edge.qat_learning_rate)
    parser.add_argument("--representative-examples", type=int, default=200)
    parser.add_argument("--config", default="default", help="pipeline config for the data")
    parser.add_argument("--out", help="JSON report (default: benchmarks/results/"
                                      "edge_bench.json, edge_profile.json with --profile)")
    args = parser.parse_args()
    host = machine.describe()

    # The bench dataset (generated on first use) unless --profile is given both inputs.
    given = args.profile and args.model and args.examples
    run_config, splits = (None, {}) if given else bench_data(args.config)
    with tempfile.TemporaryDirectory(prefix="edge-bench-") as work:
        serving_dir = args.model
        if not serving_dir:
            config = TrainConfig.from_dict(
                {**run_config.train.hparams, "class_names": list(synth.CLASS_NAMES)})
            serving_dir = train_and_export(config, splits, work)[1]
        if args.profile:
            examples = args.examples or str(pathlib.Path(splits["train"]).parent.parent)
            report = {"machine": host, "model": serving_dir, "examples": examples,
                      **profile(args, serving_dir, examples, work)}
            print(f"\n{machine.summary(host)}")
            _print_profile(report)
            write_report(report, args.out or str(RESULTS_DIR / "edge_profile.json"))
            return
        detector, config = load_detector(serving_dir)
        started = time.perf_counter()
        variants = build_variants(detector, config, [splits["train"]], work, args.qat_epochs,
                                  args.qat_learning_rate, args.representative_examples)
        build_seconds = time.perf_counter() - started
        paths = {}
        for variant, flatbuffer in variants.items():
            paths[variant] = os.path.join(work, f"{variant}.tflite")
            pathlib.Path(paths[variant]).write_bytes(flatbuffer)
        scores = evaluate_variants(serving_dir, paths, [splits["eval"]], config.class_names,
                                   fs.META_KEYS, 20)
        first = example_features(next(read_examples([splits["eval"]])))
        image = preprocess_image(first[fs.IMAGE_ENCODED][0], config.input_size)
        sizes = {SAVED_MODEL: _dir_bytes(serving_dir),
                 **{v: len(b) for v, b in variants.items()}}
        rows = _variant_rows(serving_dir, paths, scores, sizes, image)
        probe = conv_probe(work)
    summary = _summary(rows)
    header = ("variant", "KB", "p50 1t", "p99 1t", "p50 2t", "p99 2t", "mAP", "mAP50", "D-ECE")
    print(f"\n{machine.summary(host)}; "
          f"variants built in {build_seconds:.0f} s (QAT {args.qat_epochs} epochs)")
    print(" | ".join(header))
    for r in rows:
        print(" | ".join(str(v) for v in (
            r["variant"], round(r["size_bytes"] / 1024), r["p50_ms_1t"], r["p99_ms_1t"],
            r["p50_ms_2t"], r["p99_ms_2t"], r["mAP"], r["mAP50"], r["D-ECE"])))
    print(f"conv probe ({probe['gflop']} GFLOP, 1 thread): float32 {probe['float32_ms']} ms, "
          f"int8 {probe['int8_ms']} ms -> int8 x{probe['int8_speedup']}")
    print(json.dumps(summary))
    report = {"machine": host, "dataset": run_config.data.synthetic.key,
              "model": args.model or "trained: default small",
              "qat_epochs": args.qat_epochs, "qat_learning_rate": args.qat_learning_rate,
              "build_seconds": round(build_seconds, 1), "rows": rows, "conv_probe": probe,
              "summary": summary, "slices": {n: {s: {k: m[k] for k in ("mAP", "num_images")}
                                                 for s, m in scores[n].items()}
                                             for n in scores}}
    write_report(report, args.out or str(RESULTS_DIR / "edge_bench.json"))


if __name__ == "__main__":
    main()
