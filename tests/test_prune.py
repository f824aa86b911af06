"""Pruning: which convs, the schedule, the achieved sparsity, the stripped model's structure,
sparse TFLite storage, and prune_bench's smoke run.

The detector is the real ``small`` one at 64 px with its initial weights (pruning and
export do not need a good model); the data is ``trainer_fixture``'s tiny splits.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras as keras

from benchmarks import prune_bench
from serving.tflite_runner import TFLiteDetector
from tests.trainer_fixture import CLASS_NAMES, make_example, write_split
from trainer import prune, tflite
from trainer.config import TrainConfig
from trainer.export import export_saved_model, load_detector
from trainer.model import build_model

INPUT_SIZE = 64
MAX_DETECTIONS = 20
TARGET = 0.75
CONFIG = TrainConfig(class_names=tuple(CLASS_NAMES), input_size=INPUT_SIZE, batch_size=8,
                     max_detections=MAX_DETECTIONS)


def _detector() -> keras.Model:
    keras.utils.set_random_seed(7)
    return build_model("small", INPUT_SIZE, len(CLASS_NAMES))


@pytest.fixture(scope="module")
def splits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An Examples artifact directory: {"root": its path, "train"/"eval": split globs}."""
    root = str(tmp_path_factory.mktemp("examples"))
    rng = np.random.default_rng(0)
    examples = [make_example(rng, i) for i in range(40)]
    return {"root": root,
            "train": write_split(os.path.join(root, "Split-train"), examples[:32]),
            "eval": write_split(os.path.join(root, "Split-eval"), examples[32:])}


@pytest.fixture(scope="module")
def pruned(splits, tmp_path_factory):
    detector = _detector()
    before = [w.copy() for w in detector.get_weights()]
    model = prune.prune_detector(detector, CONFIG, [splits["train"]], TARGET,
                                 str(tmp_path_factory.mktemp("run")), epochs=1,
                                 steps_per_epoch=4)
    return {"detector": detector, "before": before, "model": model}


# --- which layers, the schedule ----------------------------------------------------------
def test_pruned_layers_are_the_large_convs_but_the_stem_and_the_outputs():
    detector = _detector()
    names = prune.pruned_layer_names(detector)
    convs = [layer.name for layer in detector.layers if isinstance(layer, keras.layers.Conv2D)]
    dense = set(convs) - set(names)
    assert dense == {"stem_conv", "heatmap_logits", "size_logits", "offset_logits",
                     "stage0_block0_project_conv"}  # the last: 768 < MIN_PRUNED_WEIGHTS
    assert len(names) == 17 and {"heatmap_hidden_conv", "lateral0_conv"} <= set(names)
    weights = {layer.name: layer.kernel.shape.num_elements() for layer in detector.layers
               if layer.name in convs}
    assert sum(weights[n] for n in names) / sum(weights.values()) > 0.99


@pytest.mark.parametrize("total_steps", [1, 4, 7, 150, 301])
def test_schedule_reaches_the_target_on_its_last_mask_update(total_steps):
    schedule = prune.schedule(TARGET, total_steps)
    config = schedule.get_config()["config"]
    end, frequency = config["end_step"], config["frequency"]
    assert 0 < end <= total_steps and end % frequency == 0
    updates = [step for step in range(1, total_steps + 1) if bool(schedule(step)[0])]
    assert updates and updates[-1] == end and len(updates) <= prune.MASK_UPDATES + 1
    assert float(schedule(end)[1]) == pytest.approx(TARGET)
    assert float(schedule(updates[0])[1]) <= TARGET


def test_tfmot_xnnpack_latency_policy_rejects_the_detector():
    """tfmot's policy for XNNPACK sparse inference checks for the subgraph XNNPACK needs
    (a padded 3x3 stride-2 stem ... global average pooling): this detector has none,
    which is why ``trainer.prune`` prunes for size, 3x3 convs included."""
    policy = tfmot.sparsity.keras.PruneForLatencyOnXNNPack()
    with pytest.raises(ValueError, match="Could not find `Conv2D 3x3` layer with stride 2x2"):
        policy.ensure_model_supports_pruning(_detector())


def test_prune_detector_rejects_a_share_outside_0_1():
    with pytest.raises(ValueError, match=r"target_sparsity=75; use a share in \(0, 1\)"):
        prune.prune_detector(_detector(), CONFIG, ["unused"], 75, "unused")


# --- the pruned model --------------------------------------------------------------------
@pytest.mark.slow
def test_pruned_convs_reach_the_target_and_the_rest_stay_dense(pruned):
    names = prune.pruned_layer_names(pruned["detector"])
    by_layer = prune.kernel_sparsity(pruned["model"])
    for name, sparsity in by_layer.items():
        if name in names:
            assert sparsity == pytest.approx(TARGET, abs=0.01), name
        else:
            assert sparsity == 0.0, name
    assert prune.overall_sparsity(pruned["model"], names) == pytest.approx(TARGET, abs=0.005)
    # The caller's detector is not pruned: the fine-tune ran on a copy.
    for before, after in zip(pruned["before"], pruned["detector"].get_weights(), strict=True):
        np.testing.assert_array_equal(before, after)


def _signatures(export_dir: str) -> dict[str, tuple]:
    loaded = tf.saved_model.load(export_dir)
    return {key: (fn.structured_input_signature, fn.structured_outputs)
            for key, fn in loaded.signatures.items()}


@pytest.mark.slow
def test_stripped_model_exports_like_the_dense_one(pruned, tmp_path):
    detector, model = pruned["detector"], pruned["model"]
    assert [layer.name for layer in model.layers] == [layer.name for layer in detector.layers]
    assert [v.name for v in model.variables] == [v.name for v in detector.variables]
    assert not [layer for layer in model.layers if "prune" in type(layer).__name__.lower()]
    dirs = {}
    for name, m in (("dense", detector), ("pruned", model)):
        dirs[name] = str(tmp_path / name)
        export_saved_model(m, dirs[name], INPUT_SIZE, MAX_DETECTIONS, CONFIG.to_dict(),
                           list(CLASS_NAMES))
    assert _signatures(dirs["pruned"]) == _signatures(dirs["dense"])
    # load_detector rebuilds a plain detector and checks every variable name against it.
    reloaded, _ = load_detector(dirs["pruned"])
    assert prune.kernel_sparsity(reloaded) == prune.kernel_sparsity(model)


@pytest.mark.slow
@pytest.mark.parametrize("variant", [tflite.FLOAT32, tflite.PTQ_INT8])
def test_sparse_storage_is_lossless_and_keeps_xnnpack_partitions(pruned, splits, tmp_path,
                                                                 variant):
    model = pruned["model"]
    images = tflite.representative_images([splits["train"]], INPUT_SIZE, 4)
    paths = {}
    for sparse in (False, True):
        flatbuffer = tflite.convert(model, variant, INPUT_SIZE, MAX_DETECTIONS, images,
                                    sparse=sparse)
        paths[sparse] = str(tmp_path / f"sparse-{sparse}.tflite")
        with open(paths[sparse], "wb") as f:
            f.write(flatbuffer)
    found = {sparse: prune_bench.inspect_flatbuffer(path) for sparse, path in paths.items()}
    names = sorted(prune.pruned_layer_names(pruned["detector"]))
    assert found[False]["sparse_weight_layers"] == [] and found[False]["densify_ops"] == 0
    assert found[True]["sparse_weight_layers"] == names
    assert found[True]["densify_ops"] == len(names)
    # No more XNNPACK partitions: the delegate unpacks the sparse weights at load time.
    assert found[True]["xnnpack_partitions"] == found[False]["xnnpack_partitions"]
    if variant == tflite.FLOAT32:  # 75 % zeros: values + indices < dense float32
        assert os.path.getsize(paths[True]) < 0.6 * os.path.getsize(paths[False])
    eval_images = tflite.representative_images([splits["eval"]], INPUT_SIZE, 4)
    outputs = {sparse: TFLiteDetector(path).detect_images(eval_images)
               for sparse, path in paths.items()}
    for key, value in outputs[False].items():
        np.testing.assert_array_equal(outputs[True][key], value, err_msg=key)


# --- the benchmark's smoke path ----------------------------------------------------------
@pytest.mark.slow
def test_prune_bench_smoke_writes_a_row_per_model_and_format(splits, tmp_path):
    serving_dir = str(tmp_path / "serving")
    export_saved_model(_detector(), serving_dir, INPUT_SIZE, MAX_DETECTIONS, CONFIG.to_dict(),
                       list(CLASS_NAMES))
    out = tmp_path / "prune_bench.json"
    prune_bench.main(["--smoke", "--model", serving_dir, "--examples", splits["root"],
                      "--out", str(out)])
    report = json.loads(out.read_text())
    rows = {row["file"]: row for row in report["rows"]}
    assert list(rows) == ["dense/float32", "dense/ptq_int8", "pruned-0.50/float32",
                          "pruned-0.50/float32+sparse", "pruned-0.50/ptq_int8",
                          "pruned-0.50/ptq_int8+sparse"]
    assert report["machine"]["cpus"] and "allowed" in report["xnnpack_sparse"]
    for name, row in rows.items():
        assert row["measured_sparsity"] == pytest.approx(
            0.0 if name.startswith("dense") else 0.5, abs=0.01), name
        assert 0 < row["gzip_bytes"] < row["size_bytes"]
        assert all(row[f"{p}_ms_{t}t"] > 0 for p in ("p50", "p99") for t in (1, 2)), name
        assert 0 <= row["mAP"] <= 1 and 0 <= row["mAP50"] <= 1
        assert bool(row["sparse_weight_layers"]) == row["sparse_encoding"], name
    for label in ("float32", "ptq_int8"):
        plain, sparse = rows[f"pruned-0.50/{label}"], rows[f"pruned-0.50/{label}+sparse"]
        assert sparse["mAP"] == plain["mAP"]  # the sparse storage is lossless
        assert rows[f"dense/{label}"]["p50_1t_vs_dense"] == 1.0
    # Float weights at 50 % zeros take less room stored sparse; int8 ones need not (an
    # index per 1-byte value: 482 vs 447 KB on this fixture).
    assert (rows["pruned-0.50/float32+sparse"]["size_bytes"]
            < rows["pruned-0.50/float32"]["size_bytes"])
