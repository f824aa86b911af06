"""Runs the Sightline DAG locally: LocalDagRunner, Beam DirectRunner, MLMD in the home's
SQLite file or a shared MySQL database (``metadata_store``).

One run per home at a time (``run_control``), recorded and resumable (``run_record``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from ml_metadata.proto import metadata_store_pb2
from rich.console import Console
from tfx import v1 as tfx
from tfx.dsl.compiler import compiler
from tfx.proto.orchestration import pipeline_pb2

from components import versions
from pipelines import configs, metadata_store, run_control, run_record, teacher
from pipelines.console import component_progress
from pipelines.pipeline import create_pipeline

# Beam workers get Sightline from its sdist (``BeamSettings.with_setup_file``); None when
# Sightline was installed without its source tree.
_SOURCE_SETUP = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                             "setup.py")
SETUP_FILE = _SOURCE_SETUP if os.path.exists(_SOURCE_SETUP) else None


def build(config: configs.RunConfig, paths: configs.Paths, data_root: str) -> tfx.dsl.Pipeline:
    """The pipeline for a config, with local paths and the ML Metadata store it names."""
    from schemas.curate import class_names  # imports TFDV: only when building the DAG

    return create_pipeline(
        **{**config.sections(), "beam": config.beam.with_setup_file(SETUP_FILE)},
        pipeline_name=config.pipeline_name,
        pipeline_root=paths.pipeline_root,
        data_root=data_root,
        class_names=class_names(config.data.schema_path),
        serving_model_dir=paths.serving_model_dir,
        edge_bundle_dir=paths.edge_bundle_dir,
        metadata_connection_config=metadata_store.connection_config(config.metadata,
                                                                    paths.home),
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


def run(config: configs.RunConfig, home: str, console: Console,
        lock: run_control.HomeLock | None = None,
        labels: Mapping[str, str] | None = None) -> run_record.RunStart:
    """Runs the whole DAG, or resumes its interrupted last run; returns how it started.

    Args:
      lock: the home's run lock if the caller holds it already (the CLI takes it before
        opening the run's log); else it is taken here.
      labels: string custom properties for the run's context in ML Metadata, e.g. the
        span and trigger of a scheduled run (``pipelines.schedule``).
    Raises:
      run_control.HomeError: the home cannot be written, or another run holds it.
      metadata_store.MetadataStoreError: the ML Metadata store cannot be used (one line).
      run_control.RunFailed: a component failed (e.g. the anomaly gate); its run id and
        reason, which ML Metadata holds too.
    """
    paths = configs.Paths(home, config.pipeline_name)
    connection = metadata_store.connection_config(config.metadata, home)
    with run_control.holding(paths, lock) as held:
        store = metadata_store.open_store(connection)  # checked, schema created, first
        if metadata_store.is_shared(connection):
            console.print(f"ML Metadata: {metadata_store.describe(connection)}")
        for directory in (paths.serving_model_dir, paths.edge_bundle_dir):
            for stage in versions.discard_stages(directory):  # a killed push's; never served
                console.print(f"Removed an unfinished push: {os.path.join(directory, stage)}")
        data_root = ensure_data(config, paths, console)
        pipeline = build(config, paths, data_root)
        teacher.check_teacher(pipeline, store)  # train.teacher=<size>: one is recorded
        ir = compiler.Compiler().compile(pipeline)
        return run_ir(ir, connection, data_root, held, console, labels)


def run_ir(ir: pipeline_pb2.Pipeline, metadata: str | metadata_store_pb2.ConnectionConfig,
           data_root: str, lock: run_control.HomeLock, console: Console,
           labels: Mapping[str, str] | None = None) -> run_record.RunStart:
    """Runs a compiled pipeline (its run id not yet substituted) as one recorded run.

    The run id is chosen before LocalDagRunner starts, so the run knows its own record;
    an interrupted last run of the pipeline is resumed when neither ``ir`` nor the data
    changed since. ``metadata``: the store ``ir`` names, or a SQLite path.
    """
    connection = metadata
    if isinstance(metadata, str):
        connection = tfx.orchestration.metadata.sqlite_metadata_connection_config(metadata)
    start = run_record.begin(connection, ir, run_record.fingerprint(ir, data_root), labels,
                             shared=metadata_store.is_shared(connection))
    lock.announce(start.run_id, ir.pipeline_info.id)
    console.print(f"{start.message}\nRunning [bold]{ir.pipeline_info.id}[/] on {data_root}")
    with run_record.recorded(connection, start.run_id), component_progress(console):
        tfx.orchestration.LocalDagRunner().run_with_ir(ir)
    return start
