"""Trains each detector size on the default dataset with the default budget and scores it.

    .venv/bin/python -m benchmarks.train_bench                          # small and medium
    .venv/bin/python -m benchmarks.train_bench --sizes small --set epochs=4
    .venv/bin/python -m benchmarks.train_bench --profile --sizes small   # one step, by stage

The dataset is the pipeline's default (``pipelines/configs.py``), generated once into
``.sightline/bench-data`` and split exactly as CocoExampleGen splits it (TFX's hash
partition on ``image/source_id``, 4:1). Each size trains with the config's ``TrainConfig``
(plus ``--set`` overrides: ``--config ten_minutes`` trains to that preset's time budget,
``--set time_budget_s=...`` to any), is exported, and is scored on the eval split through the
exported ``serving_examples`` signature, the path TFMA takes, with the COCO metric the
Evaluator uses. Prints a table and writes ``benchmarks/results/train_bench.json``:

* ``train_images_per_s``: training images (steps x batch) over the whole ``train()`` wall
  time (tracing and periodic validation included, so it is what a budget is planned with);
  ``step_ms``: the Trainer's own timing of steps 5-25 of the second epoch (the first's, for a
  run of one epoch): what ``time_budget_s`` plans with;
* ``gflops_per_image``: forward-pass FLOPs (x2 MACs) at the input size, from TF's profiler;
* ``matmul_fraction``: 3 x forward FLOPs (forward + backward) x images/s over this CPU's
  measured matmul throughput in the row's precision: how much of the machine training uses.
  ``--precisions float32 bfloat16`` gives a row per precision (``auto``, the default, is
  what the Trainer would pick on this CPU).
* ``mAP_agnostic``, ``mAP50_agnostic``: the same scoring with every class merged into one,
  so the gap to ``mAP`` is what confusing the shapes costs, the rest is localization.

``--profile`` trains nothing to the end: it times one training step's parts, each alone on
the whole machine, in ms per batch (``profile_step``), and writes
``benchmarks/results/train_profile.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pathlib
import sys
import tempfile
import time
from collections.abc import Iterable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf
from tfx.components.example_gen.base_example_gen_executor import _PartitionFn
from tfx.proto import example_gen_pb2

from benchmarks import machine
from benchmarks.report import print_table, write_report
from components.coco_eval import offline, results
from data import coco, synth
from data import feature_spec as fs
from pipelines import configs
from trainer.config import MODEL_SIZES, TrainConfig
from trainer.export import export_saved_model
from trainer.hardware import cpu_flags, resolve_precision
from trainer.input import augment, count_examples, list_files, make_dataset, parse_example
from trainer.losses import detection_loss
from trainer.model import OUTPUT_STRIDE, build_model
from trainer.targets import encode_targets
from trainer.train import CenterNetTrainer, TrainResult, make_optimizer, precision_policy, train

ROOT = pathlib.Path(__file__).resolve().parent.parent  # the repository
RESULTS_DIR = ROOT / "benchmarks" / "results"
DATA_CACHE = ROOT / ".sightline" / "bench-data"
SPLITS = (("train", 4), ("eval", 1))  # CocoExampleGen's default hash buckets
METRICS = ("mAP", "mAP50", "mAP75", "mAP_small", "mAP_medium", "mAP_large")
# The same metrics with every class merged into one: what finding and fitting boxes
# scores; the gap to METRICS is what naming the shapes costs.
AGNOSTIC_METRICS = ("mAP", "mAP50")


def _write_splits(synthetic: configs.SyntheticData, out: pathlib.Path) -> dict[str, str]:
    """COCO dataset -> GZIP TFRecords per split, partitioned like CocoExampleGen."""
    patterns = {name: str(out / f"Split-{name}" / "*") for name, _ in SPLITS}
    if (out / "done").exists():
        return patterns
    annotations = synth.generate(out / "coco", synthetic.num_images, synthetic.seed,
                                 synthetic.scenario, progress=sys.stderr)
    dataset = coco.load_annotations(str(annotations))
    label_map = coco.label_map_of(dataset)
    records, quarantined = coco.plan_records(dataset, label_map)
    if quarantined:
        sys.exit(f"the generated dataset has quarantined records: {quarantined[:3]}")
    split_config = example_gen_pb2.SplitConfig(partition_feature_name=fs.IMAGE_SOURCE_ID)
    buckets = list(np.cumsum([b for _, b in SPLITS]))
    options = tf.io.TFRecordOptions(compression_type="GZIP")
    writers = []
    for name, _ in SPLITS:
        (out / f"Split-{name}").mkdir(parents=True, exist_ok=True)
        writers.append(tf.io.TFRecordWriter(str(out / f"Split-{name}" / "data.gz"), options))
    for record in records:
        example = coco.record_to_example(record, str(out / "coco"), label_map)
        writers[_PartitionFn(example, len(SPLITS), buckets, split_config)].write(
            example.SerializeToString())
    for writer in writers:
        writer.close()
    (out / "done").touch()
    return patterns


def matmul_gflops(precision: str = "float32", side: int = 2048, repeats: int = 10) -> float:
    """This CPU's matmul throughput in ``precision`` (float32 or bfloat16) with TF's thread
    pools (best of ``repeats``): the peak a training precision is measured against."""
    a = tf.cast(tf.random.stateless_normal((side, side), (1, 2)), precision)
    matmul = tf.function(lambda x: tf.matmul(x, x))
    matmul(a).numpy()
    best = min(_seconds(lambda: matmul(a).numpy()) for _ in range(repeats))
    return 2 * side**3 / best / 1e9


def _seconds(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def forward_gflops(config: TrainConfig) -> float:
    """FLOPs of one image's forward pass, counted by TF's profiler on the frozen graph."""
    detector = build_model(config.model_size, config.input_size, config.num_classes)
    spec = tf.TensorSpec((1, config.input_size, config.input_size, 3), tf.float32)
    graph = tf.function(lambda x: detector(x, training=False)).get_concrete_function(spec).graph
    builder = tf.compat.v1.profiler.ProfileOptionBuilder
    options = builder(builder.float_operation()).with_empty_output().build()
    profile = tf.compat.v1.profiler.profile(graph, options=options)
    return profile.total_float_ops / 1e9


def _one_class(example: bytes) -> bytes:
    """The serialized example with every object relabelled class 1."""
    parsed = tf.train.Example.FromString(example)
    labels = parsed.features.feature[fs.CLASS_LABEL].int64_list.value
    labels[:] = [1] * len(labels)
    return parsed.SerializeToString()


def _one_class_detector(detect: offline.DetectFn) -> offline.DetectFn:
    def run(encoded):
        outputs = dict(detect(encoded))
        classes = np.asarray(outputs[fs.DETECTION_CLASSES])
        return {**outputs, fs.DETECTION_CLASSES: np.where(classes > 0, 1.0, 0.0)}
    return run


def class_agnostic_metrics(detect: offline.DetectFn, examples: Iterable[bytes]
                           ) -> dict[str, float]:
    """``offline.evaluate``'s overall metrics with every GT object and detection class 1."""
    return offline.evaluate(_one_class_detector(detect), map(_one_class, examples), ["object"],
                            slice_keys=())[results.OVERALL]


def score(serving_dir: str, eval_pattern: str, class_names: list[str]) -> dict[str, float]:
    """COCO metrics of the exported model on the eval split, by the Evaluator's metric code,
    plus their class-agnostic counterparts (``<metric>_agnostic``)."""
    detect = offline.saved_model_detector(serving_dir)
    overall = offline.evaluate(detect, offline.read_examples([eval_pattern]), class_names,
                               slice_keys=())[results.OVERALL]
    agnostic = class_agnostic_metrics(detect, offline.read_examples([eval_pattern]))
    return {**{m: overall[m] for m in METRICS},
            **{f"{m}_agnostic": agnostic[m] for m in AGNOSTIC_METRICS},
            "num_eval_images": int(overall["num_images"])}


def train_and_export(config: TrainConfig, splits: dict[str, str], work: str
                     ) -> tuple[TrainResult, str, float]:
    """Trains on the bench splits and exports to ``work/serving``; returns the seconds too."""
    started = time.perf_counter()
    result = train(config, [splits["train"]], [splits["eval"]], os.path.join(work, "run"))
    seconds = time.perf_counter() - started
    serving_dir = os.path.join(work, "serving")
    export_saved_model(result.detector, serving_dir, config.input_size, config.max_detections,
                       {**config.to_dict(), **result.records()}, list(config.class_names))
    return result, serving_dir, seconds


def bench_data(config_name: str, overrides: list[str] = ()
               ) -> tuple[configs.RunConfig, dict[str, str]]:
    """The pipeline config (``--set`` overrides applied to ``train``) and its split files."""
    # The pipeline's own config and override parser: --set epochs=4 is train.epochs=4.
    run_config = configs.load(config_name, [f"train.{item}" for item in overrides])
    synthetic = run_config.data.synthetic
    # The generator's source is part of the key: a changed generator makes new data.
    version = hashlib.sha256(pathlib.Path(synth.__file__).read_bytes()).hexdigest()[:8]
    return run_config, _write_splits(synthetic, DATA_CACHE / f"{synthetic.key}-{version}")


def bench_size(size: str, precision: str, train_config: dict, splits: dict[str, str],
               peaks: dict[str, float]) -> dict:
    """Trains, exports and scores one size in one precision; ``peaks`` are the matmul
    GFLOP/s per precision."""
    config = TrainConfig.from_dict({**train_config, "class_names": list(synth.CLASS_NAMES),
                                    "model_size": size, "precision": precision})
    num_train = count_examples([splits["train"]])
    with tempfile.TemporaryDirectory(prefix=f"train-bench-{size}-") as work:
        result, serving_dir, train_seconds = train_and_export(config, splits, work)
        metrics = score(serving_dir, splits["eval"], list(config.class_names))
    gflops = forward_gflops(config)
    images_per_s = result.steps * config.batch_size / train_seconds
    return {
        "model_size": size,
        "precision": result.precision,
        "params": result.detector.count_params(),
        "input_size": config.input_size,
        "epochs": config.epochs,
        "time_budget_s": config.time_budget_s,
        "steps": result.steps,
        "step_ms": round(1000 * result.step_seconds, 1),
        "train_images": num_train,
        "train_seconds": round(train_seconds, 1),
        "train_images_per_s": round(images_per_s, 1),
        "gflops_per_image": round(gflops, 3),
        "matmul_fraction": round(3 * gflops * images_per_s / peaks[result.precision], 3),
        "final_train_loss": result.final_train_loss,
        **{k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()},
        "config": config.to_dict(),
    }


# --- --profile: one step, stage by stage -------------------------------------------------
PROFILE_WARMUP_BATCHES = 3  # tracing and thread-pool start-up, not timed


def _ms_per_batch(batches, count: int) -> dict[str, float]:
    """Per ``next()`` of an iterator, over ``count`` calls after the warm-up: the median
    wall ms, and the mean CPU ms of the whole process (every thread). On 2 shared cores
    the CPU time is the steadier figure, and the one that says what input work takes
    from the model when both run at once."""
    for _ in range(PROFILE_WARMUP_BATCHES):
        next(batches)
    times = []
    cpu_started = time.process_time()
    for _ in range(count):
        started = time.perf_counter()
        next(batches)
        times.append(time.perf_counter() - started)
    return {"wall_ms": round(1000 * float(np.median(times)), 1),
            "cpu_ms": round(1000 * (time.process_time() - cpu_started) / count, 1)}


def _calls(fn):
    """An endless iterator of ``fn()``, for ``_ms_per_batch``."""
    while True:
        yield fn()


def _stage_ms(ds: tf.data.Dataset, batch_size: int, count: int) -> dict[str, float]:
    """ms per ``batch_size`` elements of a per-element stage, run as training runs it
    (parallel map on every core); batching is cheap next to the stages timed."""
    return _ms_per_batch(iter(ds.ragged_batch(batch_size).repeat()), count)


def profile_step(config: TrainConfig, train_pattern: str, batches: int = 20
                 ) -> dict[str, dict[str, float]]:
    """Wall and CPU ms per batch of each part of a training step, each measured alone,
    the model in ``config.precision``.

    * ``decode``: parse + ``preprocess_image`` (JPEG decode, resize), paid in the first
      epoch only since the decoded images are cached;
    * ``augment``: flip, zoom, colour jitter of cached images; ``targets``: CenterNet
      target encoding of augmented boxes;
    * ``input``: the training ``tf.data`` pipeline alone once its cache is filled;
    * ``loss``: the loss and its gradient on fixed model outputs;
    * ``model``: a whole train step (forward, loss, backward, AdamW) on one fixed batch;
    * ``step``: a train step fed by the training pipeline (what ``fit`` runs).

    ``step`` - ``model`` is what the input costs the step after overlap (prefetch).
    """
    size, grid = config.input_size, config.input_size // OUTPUT_STRIDE
    n = config.batch_size * (batches + PROFILE_WARMUP_BATCHES + 1)
    records = tf.data.TFRecordDataset(list_files([train_pattern]), compression_type="GZIP")
    records = records.take(n).cache()
    parsed = records.map(lambda s: parse_example(s, size), tf.data.AUTOTUNE)
    decoded = parsed.cache()
    for _ in decoded:  # fill the cache
        pass

    def seeded_augment(index: tf.Tensor, example: tuple[tf.Tensor, ...]):
        return augment(*example, seed=tf.stack([tf.cast(config.seed, tf.int64), index]))

    augmented = decoded.enumerate().map(seeded_augment, tf.data.AUTOTUNE).cache()
    for _ in augmented:
        pass
    targets = augmented.map(lambda image, boxes, classes: encode_targets(
        boxes, classes, grid, config.num_classes), tf.data.AUTOTUNE)
    timings = {
        "decode": _stage_ms(parsed, config.batch_size, batches),
        "augment": _stage_ms(decoded.enumerate().map(seeded_augment, tf.data.AUTOTUNE),
                             config.batch_size, batches),
        "targets": _stage_ms(targets, config.batch_size, batches),
    }

    # The training pipeline alone, after one epoch has filled its cache.
    train_ds = make_dataset([train_pattern], config, training=True)
    steps_per_epoch = count_examples([train_pattern]) // config.batch_size
    pipeline = iter(train_ds)
    for _ in range(steps_per_epoch):
        next(pipeline)
    timings["input"] = _ms_per_batch(pipeline, batches)

    with precision_policy(resolve_precision(config.precision, cpu_flags())):
        detector = build_model(config.model_size, size, config.num_classes)
        trainer = CenterNetTrainer(detector)
        trainer.compile(optimizer=make_optimizer(config.learning_rate, config.weight_decay,
                                                 10_000, 100))
    images, batch_targets = next(pipeline)
    outputs = {k: tf.identity(v) for k, v in detector(images, training=False).items()}

    @tf.function
    def loss_and_gradient() -> list[tf.Tensor]:
        with tf.GradientTape() as tape:
            tape.watch(outputs)
            loss = detection_loss(batch_targets, outputs)["loss"]
        return tape.gradient(loss, list(outputs.values()))

    timings["loss"] = _ms_per_batch(_calls(loss_and_gradient), batches)
    step = trainer.make_train_function()
    fixed = iter(tf.data.Dataset.from_tensors((images, batch_targets)).repeat())
    timings["model"] = _ms_per_batch(_calls(lambda: step(fixed)["loss"].numpy()), batches)
    timings["step"] = _ms_per_batch(_calls(lambda: step(pipeline)["loss"].numpy()), batches)
    return timings


def run_profile(run_config: configs.RunConfig, splits: dict[str, str], sizes: list[str],
                precisions: list[str], out: str) -> None:
    """``--profile``: prints and writes ``profile_step`` per model size and precision."""
    host = machine.describe()
    rows = []
    for size in sizes:
        for precision in precisions:
            config = TrainConfig.from_dict({**run_config.train.hparams, "model_size": size,
                                            "precision": precision,
                                            "class_names": list(synth.CLASS_NAMES)})
            rows.append({"model_size": size, "batch_size": config.batch_size,
                         "input_size": config.input_size,
                         "precision": resolve_precision(precision, cpu_flags()),
                         "ms_per_batch": profile_step(config, splits["train"])})
    stages = list(rows[0]["ms_per_batch"])
    print(f"\n{machine.summary(host)}; ms per batch (wall / CPU), each stage alone")
    print_table(("size", "precision", "batch", *stages), [
        (r["model_size"], r["precision"], r["batch_size"],
         *(f"{t['wall_ms']} / {t['cpu_ms']}" for t in r["ms_per_batch"].values()))
        for r in rows])
    write_report({"machine": host, "results": rows}, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=list(MODEL_SIZES), choices=MODEL_SIZES)
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="TrainConfig field=value, e.g. epochs=4")
    parser.add_argument("--config", default="default", help="pipeline config for the data")
    parser.add_argument("--precisions", nargs="+", default=["auto"],
                        choices=("auto", "float32", "bfloat16"),
                        help="train.precision per row, e.g. float32 bfloat16")
    parser.add_argument("--profile", action="store_true",
                        help="time one training step's parts instead of training")
    parser.add_argument("--out", help="JSON path (default benchmarks/results/train_bench.json"
                        " or train_profile.json)")
    args = parser.parse_args()

    run_config, splits = bench_data(args.config, args.overrides)
    if args.profile:
        run_profile(run_config, splits, args.sizes, args.precisions,
                    args.out or str(RESULTS_DIR / "train_profile.json"))
        return
    args.out = args.out or str(RESULTS_DIR / "train_bench.json")
    synthetic = run_config.data.synthetic
    precisions = [resolve_precision(p, cpu_flags()) for p in args.precisions]
    peaks = {p: matmul_gflops(p) for p in precisions}
    rows = [bench_size(size, precision, run_config.train.hparams, splits, peaks)
            for size in args.sizes for precision in precisions]

    agnostic = [f"{m}_agnostic" for m in AGNOSTIC_METRICS]
    header = ("size", "precision", "params", "px", "steps", "step ms", "img/s", "GFLOPs",
              "of matmul", "train s", *METRICS, *agnostic)
    host = {**machine.describe(),
            **{f"matmul_gflops_{p}": round(peak, 1) for p, peak in peaks.items()}}
    peak_text = ", ".join(f"{p} {peak:.1f}" for p, peak in peaks.items())
    print(f"\n{machine.summary(host)}; matmul peak GFLOP/s: {peak_text}; "
          f"data: {synthetic.key}")
    print_table(header, [
        (r["model_size"], r["precision"], r["params"], r["input_size"], r["steps"],
         r["step_ms"], r["train_images_per_s"], r["gflops_per_image"],
         f"{100 * r['matmul_fraction']:.0f}%", r["train_seconds"],
         *(f"{r[m]:.3f}" for m in (*METRICS, *agnostic)))
        for r in rows])
    write_report({"machine": host, "dataset": synthetic.key,
                  "train_config": dict(run_config.train.hparams), "results": rows}, args.out)


if __name__ == "__main__":
    main()
