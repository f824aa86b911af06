import os
import pathlib

import pytest

# Before any test imports TensorFlow: tfmot and TFMA need Keras 2.
os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tests.coco_fixture import make_bad_coco  # noqa: E402


@pytest.fixture
def bad_coco(tmp_path: pathlib.Path) -> pathlib.Path:
    """A COCO dataset with good images and one record of every bad kind."""
    return make_bad_coco(tmp_path / "coco")
