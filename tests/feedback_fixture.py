"""Request logs for the feedback tests: synthetic scenes served by a real SavedModel and
logged by the server's own ``RequestLogger`` (seconds, no server process)."""

from __future__ import annotations

import functools
import os
import pathlib
import time
import uuid

import numpy as np

from data import coco, synth
from serving import backends, log_reader
from serving.metrics import Metrics
from serving.model_config import LoggingSettings
from serving.request_log import RequestLogger


def synth_examples(root: str | os.PathLike, scenario: str, num_images: int, seed: int = 0,
                   first_image_id: int = 1) -> list[bytes]:
    """Serialized tf.Examples (GT boxes, meta/*) of a synthetic dataset, as ingestion
    builds them."""
    folder = pathlib.Path(root) / f"{scenario}-{seed}-{first_image_id}"
    path = synth.generate(folder, num_images, seed=seed, scenario=scenario,
                          first_image_id=first_image_id)
    annotations = coco.load_annotations(str(path))
    label_map = coco.label_map_of(annotations)
    records, quarantined = coco.plan_records(annotations, label_map)
    assert not quarantined, quarantined
    return [coco.record_to_example(r, str(folder), label_map).SerializeToString()
            for r in records]


def write_examples(path: str | os.PathLike, examples: list[bytes]) -> str:
    """One GZIP TFRecord file of serialized tf.Examples, as a split holds them."""
    import tensorflow as tf

    with tf.io.TFRecordWriter(str(path), options="GZIP") as writer:
        for example in examples:
            writer.write(example)
    return str(path)


def write_log(model_dir: str, batches: list[dict[str, np.ndarray]], prefix: str,
              signature: str = backends.DEFAULT_SIGNATURE, version: int = 1,
              include_images: bool = True, model_name: str = "det",
              client_id: bytes = b"") -> list[str]:
    """Runs each batch through ``model_dir``'s signature and logs it as the server does;
    returns the log files."""
    servable = backends.load_saved_model(model_dir)
    logger = RequestLogger(model_name, LoggingSettings(prefix, 1.0,
                                                       include_images=include_images),
                           Metrics())
    try:
        for inputs in batches:
            start = time.perf_counter()
            outputs = servable.signature(signature).run(inputs)
            logger.log(version, signature, inputs, outputs, client_id,
                       request_id=uuid.uuid4().hex, role="primary", route="stable",
                       latency=time.perf_counter() - start)
    finally:
        logger.close()
    return log_reader.log_files([prefix])


def batches(key: str, values: list[bytes], size: int = 2) -> list[dict[str, np.ndarray]]:
    """``values`` as request inputs under ``key``, ``size`` per request."""
    return [{key: np.array(values[i:i + size], dtype=object)}
            for i in range(0, len(values), size)]


def export_untrained(path: str | os.PathLike, class_names: tuple[str, ...] = synth.CLASS_NAMES,
                     input_size: int = 64, seed: int = 0) -> str:
    """An untrained ``small`` detector for the synthetic classes, exported as the Trainer
    does (its features still tell dark from bright, and shapes apart, a little)."""
    import tensorflow as tf

    from trainer.export import export_saved_model
    from trainer.model import build_model

    tf.keras.utils.set_random_seed(seed)
    detector = build_model("small", input_size, len(class_names))
    export_saved_model(detector, str(path), input_size, 20,
                       {"model_size": "small", "input_size": input_size,
                        "num_classes": len(class_names), "class_names": list(class_names)},
                       list(class_names))
    return str(path)


@functools.cache
def shared_untrained() -> str:
    """``export_untrained()`` once per test process (the select and similar modules share
    it: an export is most of a fixture's time on a loaded machine)."""
    import atexit
    import shutil
    import tempfile

    root = tempfile.mkdtemp(prefix="sightline-feedback-")
    atexit.register(shutil.rmtree, root, True)
    return export_untrained(os.path.join(root, "model"))
