"""A three-node TFX pipeline that runs in seconds, for the run-control tests.

``Ingest -> Train -> Push`` through ``local_runner.run_ir``, as ``sightline run`` runs the
real DAG. ``Train`` mimics what resuming must get right: it leaves a half-written model
and a training backup (in its ModelRun) before it can be killed.

``python -m tests.toy_pipeline HOME DATA_ROOT [BEHAVIOUR]`` runs it in a process of its
own; with ``TOY_KILL_IN_TRAIN=1`` in the environment that process SIGKILLs itself inside
``Train`` (an environment variable, not a parameter: the pipeline stays the same, so the
next run may resume it).
"""

import os  # no `from __future__ import annotations`: TFX reads the components' annotations
import signal
import sys

from rich.console import Console
from tfx import v1 as tfx
from tfx.dsl.compiler import compiler
from tfx.dsl.component.experimental.annotations import (
    InputArtifact,
    OutputArtifact,
    Parameter,
)
from tfx.dsl.component.experimental.decorators import component
from tfx.types import standard_artifacts

from pipelines import configs, local_runner, run_control, run_record

PIPELINE = "toy"
KILL_ENV = "TOY_KILL_IN_TRAIN"
PARTIAL_FILE = "partial"  # written to the model before the kill: must not survive a retry
BACKUP_FILE = "backup"  # written to the ModelRun: a retried Train finds it
RETRY_FILE = "found_backup"  # written by a Train that found a backup


@component
def Ingest(data_root: Parameter[str],  # noqa: N802 (TFX component)
           examples: OutputArtifact[standard_artifacts.Examples]) -> None:
    with open(os.path.join(data_root, "data.txt")) as source:
        with open(os.path.join(examples.uri, "data"), "w") as f:
            f.write(source.read())


@component
def Train(examples: InputArtifact[standard_artifacts.Examples],  # noqa: N802 (TFX component)
          model: OutputArtifact[standard_artifacts.Model],
          model_run: OutputArtifact[standard_artifacts.ModelRun],
          behaviour: Parameter[str]) -> None:
    backup = os.path.join(model_run.uri, BACKUP_FILE)
    if os.path.exists(backup):
        open(os.path.join(model.uri, RETRY_FILE), "w").close()
    open(os.path.join(model.uri, PARTIAL_FILE), "w").close()
    open(backup, "w").close()
    if os.environ.get(KILL_ENV):
        os.kill(os.getpid(), signal.SIGKILL)
    if behaviour == "raise":
        raise ValueError("toy trainer: batch_size=1000 exceeds the 3 training examples")
    os.remove(os.path.join(model.uri, PARTIAL_FILE))


@component
def Push(model: InputArtifact[standard_artifacts.Model],  # noqa: N802 (TFX component)
         pushed: OutputArtifact[standard_artifacts.PushedModel]) -> None:
    pushed.set_int_custom_property("pushed", 1)


def create(paths: configs.Paths, data_root: str, behaviour: str = "ok") -> tfx.dsl.Pipeline:
    ingest = Ingest(data_root=data_root)
    train = Train(examples=ingest.outputs["examples"], behaviour=behaviour)
    push = Push(model=train.outputs["model"])
    return tfx.dsl.Pipeline(
        pipeline_name=PIPELINE, pipeline_root=paths.pipeline_root,
        components=[ingest, train, push],
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
            paths.metadata))


def run(home: str, data_root: str, behaviour: str = "ok") -> run_record.RunStart:
    """One toy run on ``home``, as ``sightline run`` makes one (lock, record, resume)."""
    paths = configs.Paths(home, PIPELINE)
    with run_control.claim_home(paths) as lock:
        ir = compiler.Compiler().compile(create(paths, data_root, behaviour))
        return local_runner.run_ir(ir, paths.metadata, data_root, lock, Console(quiet=True))


if __name__ == "__main__":
    from tests import toy_pipeline  # components named by the module's own name, not __main__

    toy_pipeline.run(*sys.argv[1:])
