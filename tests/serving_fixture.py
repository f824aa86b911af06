"""Small exported detectors and images for the serving tests (seconds to build)."""

from __future__ import annotations

import functools
import io
import os
import pathlib
import shutil

import numpy as np
from PIL import Image

CLASS_NAMES = ["square", "bar"]
INPUT_SIZE = 64
MAX_DETECTIONS = 10


def export_detector(export_dir: str | os.PathLike, seed: int = 0) -> None:
    """An untrained ``small`` detector exported like the Trainer does (both signatures)."""
    import tensorflow as tf

    from trainer.export import export_saved_model
    from trainer.model import build_model

    tf.keras.utils.set_random_seed(seed)
    detector = build_model("small", INPUT_SIZE, len(CLASS_NAMES))
    export_saved_model(detector, str(export_dir), INPUT_SIZE, MAX_DETECTIONS,
                       {"model_size": "small", "input_size": INPUT_SIZE,
                        "num_classes": len(CLASS_NAMES), "class_names": CLASS_NAMES},
                       CLASS_NAMES)


def export_tflite_bundle(saved_model_dir: str, bundle_dir: str | os.PathLike) -> str:
    """A float32 TFLite edge bundle (model.tflite + labels.txt) of an exported detector."""
    from trainer import tflite
    from trainer.export import load_detector

    detector, _ = load_detector(saved_model_dir)
    flatbuffer = tflite.convert(detector, tflite.FLOAT32, INPUT_SIZE, MAX_DETECTIONS)
    bundle = pathlib.Path(bundle_dir)
    bundle.mkdir(parents=True)
    (bundle / "model.tflite").write_bytes(flatbuffer)
    (bundle / "labels.txt").write_text("".join(f"{n}\n" for n in CLASS_NAMES))
    return str(bundle)


def copy_version(src: str | os.PathLike, base: str | os.PathLike, version: int) -> str:
    """Copies an export into ``base/version`` with ``saved_model.pb`` last, as the Pusher does."""
    dest = pathlib.Path(base) / str(version)
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("saved_model.pb"))
    shutil.copyfile(pathlib.Path(src) / "saved_model.pb", dest / "saved_model.pb")
    return str(dest)


def encode_image(seed: int, fmt: str = "JPEG", size: tuple[int, int] = (48, 40)) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


# ------------------------------------------------------------------ cached exports, servers

_ROOT = None


def _root() -> pathlib.Path:
    """One temp dir per test process for the exports every serving test module shares."""
    global _ROOT
    if _ROOT is None:
        import atexit
        import tempfile

        _ROOT = pathlib.Path(tempfile.mkdtemp(prefix="sightline-serving-"))
        atexit.register(shutil.rmtree, _ROOT, True)
    return _ROOT


@functools.cache
def exported_model(seed: int = 0) -> str:
    """An exported untrained detector (cached per process; ~3 s the first time)."""
    path = _root() / f"export-{seed}"
    export_detector(path, seed)
    return str(path)


@functools.cache
def tflite_bundle() -> str:
    """A float32 TFLite bundle of ``exported_model(0)`` (cached per process)."""
    return export_tflite_bundle(exported_model(0), _root() / "bundle")


@functools.cache
def tiny_tflite_bundle() -> str:
    """A seconds-to-convert TFLite model with the detector's file contract (signature
    ``serving_default``, input ``images`` [1, S, S, 3], the four detection outputs), for
    testing the TFLite backend's mechanics without the ~30 s detector conversion."""
    import tensorflow as tf

    size = INPUT_SIZE
    spec = tf.TensorSpec([1, size, size, 3], tf.float32, name="images")

    @tf.function(input_signature=[spec], autograph=False)
    def detect(images):
        pooled = tf.nn.avg_pool2d(images, 16, 16, "VALID")  # [1, 4, 4, 3]
        flat = tf.reshape(pooled, [1, 16, 3])[:, :MAX_DETECTIONS]
        boxes = tf.concat([flat, flat[..., :1]], axis=-1)
        return {"detection_boxes": boxes, "detection_scores": flat[..., 0],
                "detection_classes": flat[..., 1] * 2.0,
                "num_detections": tf.reduce_sum(tf.cast(flat[..., 0] > 0.5, tf.int32), -1)}

    module = tf.Module()
    module.detect = detect  # a trackable gives the flatbuffer its signature, as in trainer
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [detect.get_concrete_function()], module)
    bundle = _root() / "tiny-bundle"
    bundle.mkdir()
    (bundle / "model.tflite").write_bytes(converter.convert())
    return str(bundle)


@functools.cache
def reference(path: str, signature: str = "serving_default"):
    """The SavedModel's own signature function, the ground truth for the server."""
    import tensorflow as tf

    return tf.saved_model.load(path).signatures[signature]


def reference_outputs(path: str, images: list[bytes],
                      signature: str = "serving_default") -> dict[str, np.ndarray]:
    import tensorflow as tf

    key = "examples" if signature == "serving_examples" else "images"
    result = reference(path, signature)(**{key: tf.constant(images)})
    return {k: v.numpy() for k, v in result.items()}


def make_server(models, **options):
    """A started in-process server on free loopback ports."""
    from serving.server import Server, ServerOptions

    server = Server(ServerOptions(models=models, host="127.0.0.1", grpc_port=0, rest_port=0,
                                  **options))
    server.start()
    return server


def model(name: str, base_path: str, **kwargs):
    from serving.model_config import ModelSettings

    return ModelSettings(name=name, base_path=str(base_path), **kwargs)


def b64(data: bytes) -> dict[str, str]:
    import base64

    return {"b64": base64.b64encode(data).decode("ascii")}


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.05) -> None:
    """Polls until predicate() is true; fails the test with a clear message otherwise."""
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)
