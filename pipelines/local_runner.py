"""Runs the Sightline DAG locally: LocalDagRunner, Beam DirectRunner, MLMD in SQLite."""

from __future__ import annotations

import os

from rich.console import Console
from tfx import v1 as tfx

from pipelines import configs
from pipelines.console import component_progress
from pipelines.pipeline import create_pipeline


def build(config: configs.RunConfig, paths: configs.Paths, data_root: str) -> tfx.dsl.Pipeline:
    """The pipeline for a config, with local paths and a SQLite ML Metadata store."""
    from schemas.curate import class_names  # imports TFDV: only when building the DAG

    return create_pipeline(
        **config.sections(),
        pipeline_name=config.pipeline_name,
        pipeline_root=paths.pipeline_root,
        data_root=data_root,
        class_names=class_names(config.data.schema_path),
        serving_model_dir=paths.serving_model_dir,
        edge_bundle_dir=paths.edge_bundle_dir,
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
            paths.metadata
        ),
        enable_cache=config.enable_cache,
    )


def ensure_data(config: configs.RunConfig, paths: configs.Paths, console: Console) -> str:
    """The dataset folder; the synthetic default is generated on first use."""
    if config.data.root:
        return config.data.root
    from data import synth  # only needed for the generated default

    synthetic = config.data.synthetic
    root = paths.synthetic_data(synthetic)
    if not os.path.exists(os.path.join(root, "annotations.json")):
        console.print(f"Generating the synthetic dataset {synthetic.key} in {root}")
        synth.generate(root, num_images=synthetic.num_images, seed=synthetic.seed,
                       scenario=synthetic.scenario, progress=console.file)
    return root


def run(config: configs.RunConfig, home: str, console: Console) -> None:
    """Runs the whole DAG; raises if a component fails (e.g. the anomaly gate)."""
    paths = configs.Paths(home, config.pipeline_name)
    data_root = ensure_data(config, paths, console)
    pipeline = build(config, paths, data_root)
    console.print(f"Running [bold]{config.pipeline_name}[/] on {data_root}")
    with component_progress(console):
        tfx.orchestration.LocalDagRunner().run(pipeline)
