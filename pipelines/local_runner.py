"""Runs the Sightline DAG locally: LocalDagRunner, Beam DirectRunner, MLMD in SQLite."""

from __future__ import annotations

import os

from rich.console import Console
from tfx import v1 as tfx

from pipelines import configs
from pipelines.pipeline import create_pipeline
from pipelines.progress import component_progress


def build(config: configs.RunConfig, paths: configs.Paths, data_root: str) -> tfx.dsl.Pipeline:
    """The pipeline for a config, with local paths and a SQLite ML Metadata store."""
    return create_pipeline(
        **configs.pipeline_arguments(config),
        pipeline_root=paths.pipeline_root,
        data_root=data_root,
        serving_model_dir=paths.serving_model_dir,
        edge_bundle_dir=paths.edge_bundle_dir if config.edge else None,
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
            paths.metadata
        ),
        beam_pipeline_args=config.beam_pipeline_args(),
    )


def ensure_data(config: configs.RunConfig, paths: configs.Paths, console: Console) -> str:
    """The dataset folder; the synthetic default is generated on first use."""
    if config.data_root:
        return config.data_root
    from data import synth  # only needed for the generated default

    root = paths.synthetic_data(config.synthetic)
    if not os.path.exists(os.path.join(root, "annotations.json")):
        console.print(f"Generating the synthetic dataset {config.synthetic.key} in {root}")
        synth.generate(
            root,
            num_images=config.synthetic.num_images,
            seed=config.synthetic.seed,
            scenario=config.synthetic.scenario,
            show_progress=True,
        )
    return root


def run(config: configs.RunConfig, home: str, console: Console, verbose: bool = False) -> None:
    """Runs the whole DAG; raises if a component fails (e.g. the anomaly gate)."""
    paths = configs.Paths(home, config.pipeline_name)
    data_root = ensure_data(config, paths, console)
    pipeline = build(config, paths, data_root)
    console.print(f"Running [bold]{config.pipeline_name}[/] on {data_root}")
    with component_progress(console, verbose):
        tfx.orchestration.LocalDagRunner().run(pipeline)
