"""Compiles the same ``create_pipeline`` for Kubeflow Pipelines (KFP v2 / Vertex AI).

The compile is offline: the trainer is referenced by a dotted ``run_fn`` path, so no
user-code wheel is uploaded; the code must be baked into the container image, and that
image must set ``TF_USE_LEGACY_KERAS=1`` (tfmot and TFMA need Keras 2, and there the
component processes start in TFX's entrypoint, not in ``sightline``).
"""

from __future__ import annotations

import os
import re

from tfx import v1 as tfx

from pipelines import configs
from pipelines.pipeline import create_pipeline
from trainer.config import is_teacher_path

DEFAULT_IMAGE = "ghcr.io/sightline/sightline:latest"
# Where the Dockerfile puts the source (installed editable): Beam stages in the image
# hand workers Sightline's sdist from here instead of packaging TFX at every stage.
IMAGE_SETUP_FILE = "/opt/sightline/setup.py"
_KFP_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,127}$")


def _runner_class():
    """KubeflowV2DagRunner, or a clear error: TFX hides a missing kfp behind AttributeError."""
    try:
        import kfp  # noqa: F401
    except ModuleNotFoundError as e:
        raise RuntimeError(
            "Compiling for Kubeflow needs the kfp package: pip install -c constraints.txt "
            "'tfx[kfp]==1.16.0'"
        ) from e
    return tfx.orchestration.experimental


def compile_pipeline(
    config: configs.RunConfig,
    output_path: str,
    pipeline_root: str,
    data_root: str,
    serving_model_dir: str,
    image: str = DEFAULT_IMAGE,
    edge_bundle_dir: str | None = None,
) -> str:
    """Writes the KFP v2 pipeline JSON to output_path and returns the path.

    Args:
      pipeline_root / data_root / serving_model_dir: cluster-visible URIs (e.g. gs://).
      edge_bundle_dir: where edge bundles go (cluster-visible); default:
        ``<serving_model_dir>-edge``. Unused when ``config.edge.enabled`` is False.
      image: the container image with Sightline installed (``pip install -e .``).
    """
    if not _KFP_NAME.match(config.pipeline_name):
        raise ValueError(
            f"pipeline name {config.pipeline_name!r} is not a valid Kubeflow name: use lower-case "
            "letters, digits and '-', starting with a letter or digit (no underscores)"
        )
    teacher = config.train.hparams.get("teacher") or ""
    if teacher and not is_teacher_path(teacher):
        raise ValueError(
            f"train.teacher={teacher!r} is resolved from ML Metadata by a custom resolver "
            "strategy, and the Kubeflow compiler accepts only TFX's own: give the teacher's "
            "export instead, e.g. train.teacher=gs://bucket/.../Trainer/model/<id>")
    from schemas.curate import class_names  # imports TFDV: only when building the DAG

    pipeline = create_pipeline(
        **{**config.sections(), "beam": config.beam.with_setup_file(IMAGE_SETUP_FILE)},
        pipeline_name=config.pipeline_name,
        pipeline_root=pipeline_root,
        data_root=data_root,
        class_names=class_names(config.data.schema_path),
        serving_model_dir=serving_model_dir,
        edge_bundle_dir=edge_bundle_dir or serving_model_dir.rstrip("/") + "-edge",
        # The KFP compiler accepts only TFX's own resolver strategies.
        previous_span_strategy=tfx.dsl.experimental.LatestArtifactStrategy,
        enable_cache=config.enable_cache,
    )
    orchestration = _runner_class()
    runner = orchestration.KubeflowV2DagRunner(
        config=orchestration.KubeflowV2DagRunnerConfig(default_image=image),
        output_dir=os.path.dirname(os.path.abspath(output_path)),
        output_filename=os.path.basename(output_path),
    )
    runner.run(pipeline, write_out=True)
    return output_path
