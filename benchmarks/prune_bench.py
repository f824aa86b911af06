"""Pruning's trade-off, measured: TFLite size (raw, gzip), latency and mAP per sparsity.

    .venv/bin/python -m benchmarks.prune_bench --model DIR --examples DIR \
        --sparsities 0.5 0.75 --fine-tune-epochs 2
    .venv/bin/python -m benchmarks.prune_bench --smoke --model DIR --examples DIR  # seconds

``--model`` is an exported Sightline model (``<home>/pipelines/sightline/Trainer/model/
<id>/Format-Serving``), ``--examples`` an Examples artifact directory with
``Split-train/`` and ``Split-eval/`` (``CocoExampleGen/examples/<id>``). Without them the
default ``small`` detector is trained on the bench dataset first, as ``edge_bench`` does.

The dense baseline is the model as given (no pruning). Each ``--sparsities`` target gets
``trainer.prune.prune_detector``: tfmot magnitude pruning of the convs it names, fine-tuned
``--fine-tune-epochs`` epochs with the training loss and input pipeline, then stripped.
Every model is converted by ``trainer.tflite.convert`` to float32 and post-training int8
(calibrated on the first ``--representative-examples`` training images); each pruned one
also with ``sparse=True`` (weights >= 30 % zero stored in TFLite's sparse format, which
XNNPACK needs to consider sparse kernels). One row per file: measured sparsity, file size
raw and gzip -9, latency p50/p99 at batch 1 with 1 and 2 threads (ai-edge-litert with
XNNPACK; the variants' timing rounds are interleaved so they see the same machine load),
and mAP/mAP50 from the EdgeOptimizer's scoring (``evaluate_variants``: the Evaluator's
COCO metric on the eval split). "What really changes" is reported per file: the layers
whose weights the file stores sparse, its ``DENSIFY`` ops and XNNPACK partitions; and per
machine: whether XNNPACK's sparse kernels can run here at all (``xnnpack_sparse``).
Prints a table; writes ``benchmarks/results/prune_bench.json``.

``--smoke``: one sparsity (0.5, unless given), 1 epoch of 2 steps, 4 representative
images, 2 rounds of 5 timed runs: a check that the bench runs, not a measurement.
"""

from __future__ import annotations

import argparse
import gzip
import os
import pathlib
import platform
import tempfile
import time
from collections.abc import Sequence
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tf_keras as keras

from benchmarks import machine
from benchmarks.edge_bench import RESULTS_DIR, THREADS, WARMUP, _percentiles
from benchmarks.report import print_table, write_report
from benchmarks.train_bench import bench_data, train_and_export
from components.coco_eval import results
from components.coco_eval.offline import example_features, read_examples
from components.edge_optimizer.executor import SAVED_MODEL, evaluate_variants
from data import feature_spec as fs
from data import synth
from serving.edge_preprocess import preprocess_image
from serving.tflite_runner import TFLiteDetector
from trainer import prune, tflite
from trainer.config import TrainConfig
from trainer.export import load_detector
from trainer.hardware import cpu_flags

DENSE = "dense"
FORMATS = {"float32": tflite.FLOAT32, "ptq_int8": tflite.PTQ_INT8}
SPARSE_SUFFIX = "+sparse"  # the same model converted with sparse=True
ROUNDS, RUNS = 10, 300  # timed runs per file and thread count, over ROUNDS rounds
# TFLite ops that can end an XNNPACK sparse (NCHW) subgraph, on a 4-D float input: the
# spatial MEAN (global average pooling), SUM and DEPTH_TO_SPACE (XNNPACK src/subgraph.c,
# xnn_check_nchw_compatibility). Without one, no sparse cluster can form.
NCHW_EXIT_OPS = ("MEAN", "SUM", "DEPTH_TO_SPACE")
SMOKE = {"sparsities": [0.5], "fine_tune_epochs": 1, "steps_per_epoch": 2,
         "representative_examples": 4, "rounds": 2, "runs": 10, "warmup": 2}


def model_name(sparsity: float) -> str:
    return f"pruned-{sparsity:.2f}"


def inspect_flatbuffer(path: str) -> dict[str, Any]:
    """What the converter and XNNPACK did with one file.

    Returns:
      ``sparse_weight_layers``: the layers whose weights are stored sparse;
      ``densify_ops``; ``xnnpack_partitions``: DELEGATE nodes after XNNPACK is applied
      (more than the dense file has means sparse storage cut the graph into more pieces);
      ``nchw_exit_ops``: ops that could end an XNNPACK sparse subgraph.
    """
    detector = TFLiteDetector(path)
    detector.detect_image(np.zeros(detector.input_shape[1:], np.float32))  # applies XNNPACK
    interpreter = detector._interpreter  # noqa: SLF001
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    ops = interpreter._get_ops_details()  # noqa: SLF001
    sparse = [t["name"] for t in tensors.values() if t["sparsity_parameters"]]
    return {
        "sparse_weight_layers": sorted({part.split("/")[-2] for name in sparse
                                        for part in name.split(";")
                                        if part.endswith("/Conv2D")}),
        "densify_ops": sum(op["op_name"] == "DENSIFY" for op in ops),
        "xnnpack_partitions": sum(op["op_name"] == "DELEGATE" for op in ops),
        "nchw_exit_ops": sum(op["op_name"] in NCHW_EXIT_OPS and op["inputs"].size > 0
                             and len(tensors[op["inputs"][0]]["shape"]) == 4
                             and tensors[op["inputs"][0]]["dtype"] == np.float32
                             for op in ops),
    }


def xnnpack_sparse_on_this_cpu(flags: set[str], arch: str) -> dict[str, Any]:
    """Whether XNNPACK would consider sparse kernels on this CPU at all.

    On x86 it does only without AVX: its sparse microkernels are SSE-only, so on AVX CPUs
    dense inference is expected to be faster and the rewrite is off
    (``xnn_is_chw_compatible_config`` in XNNPACK). ARM and WebAssembly allow it.
    """
    x86 = arch.lower() in ("x86_64", "amd64", "i386", "i686")
    allowed = not (x86 and "avx" in flags)
    reason = ("x86 with AVX: XNNPACK disables sparse (NCHW) inference" if not allowed
              else "allowed by the CPU (the graph and the 2/3-zero rule still decide)")
    return {"arch": arch, "allowed": allowed, "reason": reason}


def interleaved_latency(paths: dict[str, str], image: np.ndarray, threads: Sequence[int],
                        rounds: int, runs: int, warmup: int) -> dict[str, dict[str, float]]:
    """{file name: {p50_ms_<t>t, p99_ms_<t>t}}: batch-1 latency (model + decode).

    Each round times every file at every thread count ``runs // rounds`` times, so a
    change in machine load lands on all of them alike.
    """
    runners = {(name, t): TFLiteDetector(path, num_threads=t)
               for name, path in paths.items() for t in threads}
    for runner in runners.values():
        for _ in range(warmup):
            runner.detect_image(image)
    seconds: dict[tuple[str, int], list[float]] = {key: [] for key in runners}
    for _ in range(rounds):
        for key, runner in runners.items():
            for _ in range(max(1, runs // rounds)):
                started = time.perf_counter()
                runner.detect_image(image)
                seconds[key].append(time.perf_counter() - started)
    latency: dict[str, dict[str, float]] = {name: {} for name in paths}
    for (name, t), values in seconds.items():
        latency[name].update({f"{k}_{t}t": v for k, v in _percentiles(values).items()})
    return latency


def build_files(models: dict[str, keras.Model], config: TrainConfig,
                images: list[np.ndarray], work: str) -> dict[str, str]:
    """{"<model>/<format>[+sparse]": path}: each model in each format, pruned ones also
    sparse-encoded."""
    paths = {}
    for name, model in models.items():
        for label, variant in FORMATS.items():
            for sparse in (False, True) if name != DENSE else (False,):
                key = f"{name}/{label}{SPARSE_SUFFIX if sparse else ''}"
                flatbuffer = tflite.convert(model, variant, config.input_size,
                                            config.max_detections, images, sparse=sparse)
                paths[key] = os.path.join(work, key.replace("/", "_") + ".tflite")
                pathlib.Path(paths[key]).write_bytes(flatbuffer)
    return paths


def rows_for(paths: dict[str, str], sparsity: dict[str, dict[str, float]],
             latency: dict[str, dict[str, float]], scores: dict, inspected: dict
             ) -> list[dict[str, Any]]:
    """One row per file; ``p50_1t_vs_dense``: its 1-thread p50 over the dense file's in
    the same format (< 1 is faster)."""
    rows = []
    for key, path in paths.items():
        name, label = key.split("/")
        data = pathlib.Path(path).read_bytes()
        overall = scores[key][results.OVERALL]
        rows.append({
            "file": key, "model": name, "format": label.removesuffix(SPARSE_SUFFIX),
            "sparse_encoding": label.endswith(SPARSE_SUFFIX), **sparsity[name],
            "size_bytes": len(data), "gzip_bytes": len(gzip.compress(data, 9)),
            **latency[key],
            "p50_1t_vs_dense": round(latency[key]["p50_ms_1t"] / latency[
                f"{DENSE}/{label.removesuffix(SPARSE_SUFFIX)}"]["p50_ms_1t"], 3),
            "mAP": round(overall["mAP"], 4), "mAP50": round(overall["mAP50"], 4),
            **inspected[key],
        })
    return rows


def _print(rows: list[dict[str, Any]], host: dict, cpu: dict, seconds: dict) -> None:
    print(f"\n{machine.summary(host)}; XNNPACK sparse inference on this CPU: "
          f"{cpu['allowed']} ({cpu['reason']})")
    print("fine-tune seconds: " + ", ".join(f"{k} {v}" for k, v in seconds.items()))
    header = ("file", "sparsity", "KB", "gzip KB", "p50 1t", "p99 1t", "p50 2t", "p99 2t",
              "vs dense 1t", "mAP", "mAP50", "sparse layers", "partitions")
    print_table(header, [
        (r["file"], r["measured_sparsity"], round(r["size_bytes"] / 1024),
         round(r["gzip_bytes"] / 1024), r["p50_ms_1t"], r["p99_ms_1t"], r["p50_ms_2t"],
         r["p99_ms_2t"], r["p50_1t_vs_dense"], r["mAP"], r["mAP50"],
         len(r["sparse_weight_layers"]), r["xnnpack_partitions"])
        for r in rows])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="exported SavedModel dir (default: train one)")
    parser.add_argument("--examples", help="Examples artifact dir with Split-train/ and "
                                           "Split-eval/ (default: the bench dataset)")
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.75])
    parser.add_argument("--fine-tune-epochs", type=int, default=2)
    parser.add_argument("--learning-rate", type=float, default=prune.DEFAULT_LEARNING_RATE)
    parser.add_argument("--steps-per-epoch", type=int,
                        help="default: one pass over the training split")
    parser.add_argument("--representative-examples", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--runs", type=int, default=RUNS,
                        help="timed runs per file and thread count, over all rounds")
    parser.add_argument("--warmup", type=int, default=WARMUP)
    parser.add_argument("--smoke", action="store_true",
                        help="tiny budget (seconds): checks the bench runs, measures nothing")
    parser.add_argument("--config", default="default", help="pipeline config for the data")
    parser.add_argument("--out", help="JSON report (default: benchmarks/results/"
                                      "prune_bench.json)")
    args = parser.parse_args(argv)
    if args.examples and not args.model:
        parser.error("--examples needs --model: the model trained on those examples")
    if args.smoke:  # the smoke budget as defaults: what the command line gives still wins
        parser.set_defaults(**SMOKE)
        args = parser.parse_args(argv)
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    host = machine.describe()
    cpu = xnnpack_sparse_on_this_cpu(cpu_flags(), platform.machine())
    with tempfile.TemporaryDirectory(prefix="prune-bench-") as work:
        # --- the dense model and its data -------------------------------------------------
        run_config = None
        if args.model and args.examples:
            splits = {s: os.path.join(args.examples, f"Split-{s}", "*") for s in ("train", "eval")}
        else:
            run_config, splits = bench_data(args.config)
        serving_dir = args.model
        if not serving_dir:
            config = TrainConfig.from_dict(
                {**run_config.train.hparams, "class_names": list(synth.CLASS_NAMES)})
            serving_dir = train_and_export(config, splits, work)[1]
        detector, config = load_detector(serving_dir)
        images = tflite.representative_images([splits["train"]], config.input_size,
                                               args.representative_examples)

        # --- prune and fine-tune, one model per target sparsity ---------------------------
        models, seconds = {DENSE: detector}, {}
        pruned_layers = prune.pruned_layer_names(detector)
        for target in args.sparsities:
            started = time.perf_counter()
            models[model_name(target)] = prune.prune_detector(
                detector, config, [splits["train"]], target,
                os.path.join(work, "runs", model_name(target)),
                args.fine_tune_epochs, args.learning_rate, args.steps_per_epoch)
            seconds[model_name(target)] = round(time.perf_counter() - started, 1)
        sparsity = {name: {"target_sparsity": 0.0 if name == DENSE else float(
                               name.removeprefix("pruned-")),
                           "measured_sparsity": round(prune.overall_sparsity(m, pruned_layers), 4),
                           "all_convs_sparsity": round(prune.overall_sparsity(m), 4)}
                    for name, m in models.items()}

        # --- convert, score, time ---------------------------------------------------------
        paths = build_files(models, config, images, work)
        scores = evaluate_variants(serving_dir, paths, [splits["eval"]], config.class_names,
                                   slice_keys=(), min_images=1)
        first = example_features(next(read_examples([splits["eval"]])))
        image = preprocess_image(first[fs.IMAGE_ENCODED][0], config.input_size)
        inspected = {key: inspect_flatbuffer(path) for key, path in paths.items()}
        latency = interleaved_latency(paths, image, THREADS, args.rounds, args.runs,
                                      args.warmup)
        rows = rows_for(paths, sparsity, latency, scores, inspected)

    _print(rows, host, cpu, seconds)
    report = {"machine": host, "xnnpack_sparse": cpu,
              "model": args.model or "trained: default small",
              "examples": args.examples or "bench dataset", "smoke": args.smoke,
              "sparsities": args.sparsities, "fine_tune_epochs": args.fine_tune_epochs,
              "learning_rate": args.learning_rate, "steps_per_epoch": args.steps_per_epoch,
              "fine_tune_seconds": seconds, "pruned_layers": pruned_layers,
              "saved_model_mAP": round(scores[SAVED_MODEL][results.OVERALL]["mAP"], 4),
              "timing": {"rounds": args.rounds, "runs": args.runs, "warmup": args.warmup},
              "rows": rows}
    write_report(report, args.out or str(RESULTS_DIR / "prune_bench.json"))


if __name__ == "__main__":
    main()
