"""Runs a Sightline TFLite variant with the edge runtime, not TensorFlow.

Uses ``ai-edge-litert`` (TFLite's successor package; ``tflite-runtime`` if that is what
the device has) with XNNPACK, and returns the SavedModel's output contract
(``data.feature_spec.DETECTION_OUTPUTS``): ``detection_boxes`` [B, K, 4] normalized
(ymin, xmin, ymax, xmax), ``detection_scores``, ``detection_classes`` (1-based, float)
and ``num_detections``. Preprocessing is ``serving.edge_preprocess``, pinned by
tests to the training/serving preprocessing in ``trainer/preprocess.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from serving.edge_preprocess import preprocess_image

try:
    from ai_edge_litert.interpreter import Interpreter
except ImportError:  # older devices ship only tflite-runtime
    from tflite_runtime.interpreter import Interpreter

SIGNATURE_KEY = "serving_default"
INPUT_NAME = "images"


class TFLiteDetector:
    """One loaded TFLite detector; not thread-safe (use one per thread)."""

    def __init__(self, model_path: str, num_threads: int = 1):
        """
        Args:
          model_path: a ``.tflite`` file written by ``trainer.tflite.convert``.
          num_threads: CPU threads for XNNPACK and the builtin kernels.
        """
        self._interpreter = Interpreter(model_path=model_path, num_threads=num_threads)
        signatures = self._interpreter.get_signature_list()
        if SIGNATURE_KEY not in signatures or signatures[SIGNATURE_KEY]["inputs"] != [INPUT_NAME]:
            raise ValueError(f"{model_path}: expected signature {SIGNATURE_KEY!r} with input "
                             f"{INPUT_NAME!r}, found {signatures}")
        self._runner = self._interpreter.get_signature_runner(SIGNATURE_KEY)
        details = self._runner.get_input_details()[INPUT_NAME]
        self.input_shape = tuple(int(d) for d in details["shape"])
        self.input_dtype = np.dtype(details["dtype"])
        scale, zero_point = details["quantization"]
        self.input_quantization = (float(scale), int(zero_point))
        self.input_size = self.input_shape[1]

    def input_spec(self) -> dict[str, Any]:
        """What the model file expects, as the edge bundle states it."""
        return {
            "name": INPUT_NAME,
            "shape": list(self.input_shape),
            "dtype": self.input_dtype.name,
            "quantization": ({"scale": self.input_quantization[0],
                              "zero_point": self.input_quantization[1]}
                             if self.input_dtype != np.float32 else None),
        }

    def output_types(self) -> dict[str, str]:
        return {name: np.dtype(d["dtype"]).name
                for name, d in self._runner.get_output_details().items()}

    def detect_image(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """One preprocessed float32 [S, S, 3] image in [0, 1] -> outputs with batch 1."""
        if image.shape != self.input_shape[1:]:
            raise ValueError(f"image shape {image.shape}; the model takes {self.input_shape[1:]}")
        x = image[None].astype(np.float32)
        if self.input_dtype != np.float32:
            scale, zero_point = self.input_quantization
            info = np.iinfo(self.input_dtype)
            x = np.clip(np.round(x / scale) + zero_point, info.min, info.max)
        return self._runner(**{INPUT_NAME: x.astype(self.input_dtype)})

    def detect_images(self, images: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """Preprocessed images -> the detection outputs stacked over the batch (the model
        runs at batch 1)."""
        outputs = [self.detect_image(image) for image in images]
        if not outputs:
            raise ValueError("detect() needs at least one image")
        return {k: np.concatenate([o[k] for o in outputs]) for k in outputs[0]}

    def detect(self, encoded_images: Sequence[bytes]) -> dict[str, np.ndarray]:
        """Encoded JPEG/PNG images -> the detection outputs stacked over the batch."""
        return self.detect_images([preprocess_image(e, self.input_size)
                                   for e in encoded_images])
