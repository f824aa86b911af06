"""Benchmarks, each run as a module from the repo root: ``python -m benchmarks.<name>``."""

import os

# Before any bench imports TensorFlow: tfmot and TFMA need Keras 2 (tf_keras), not Keras 3.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
