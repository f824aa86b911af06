"""``sightline run``, ``sightline compile`` and ``sightline config``."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time

import click
from absl import logging as absl_logging
from rich.console import Console
from rich.markup import escape

from pipelines import configs, metadata_store, run_control, run_status
from pipelines.cli import scheduled
from pipelines.cli.common import (
    config_option,
    console,
    emit,
    home_option,
    json_option,
    load_config,
    metadata_option,
    overrides_option,
)
from pipelines.console import library_output_to


@click.command()
@config_option
@overrides_option
@click.option("--data", "data_root", default=None,
              help="A COCO dataset folder instead of the synthetic default (data.root).")
@click.option("--pattern", default=None, help="Annotations file within --data, e.g. "
              "'span-{SPAN}/annotations.json' (data.annotations_pattern).")
@click.option("--images", "images_root", default=None, metavar="DIR",
              help="The folder image file_name entries are relative to, relative to --data "
              "(data.images_root), e.g. 'train' beside 'annotations/instances_train.json'; "
              "default: the annotations file's folder.")
@click.option("--beam-mode", type=click.Choice(["in_memory", "multi_processing"]), default=None,
              help="Beam DirectRunner mode (beam.direct_running_mode).")
@click.option("--when-new-span", is_flag=True,
              help="For schedulers: run only if the latest span under --data/--pattern has not "
              "succeeded or failed yet; exit 75 if another run holds the home.")
@click.option("--verbose", is_flag=True,
              help="Show TensorFlow, TFX and Beam output here instead of in the run's log file.")
@home_option
@metadata_option
@json_option
def run(config_name, overrides, data_root, pattern, images_root, beam_mode, when_new_span,
        verbose, home, metadata, as_json) -> None:
    """Run the whole DAG locally and print the run summary."""
    flags = {"data.root": data_root, "data.annotations_pattern": pattern,
             "data.images_root": images_root, "beam.direct_running_mode": beam_mode,
             "metadata": metadata}
    config = load_config(config_name, [*overrides, *(f"{k}={v}" for k, v in flags.items() if v)])
    home = configs.home_dir(home)
    paths = configs.Paths(home, config.pipeline_name)
    # Before the log: a refused run (or one with nothing new to do) writes nothing.
    lock, config, labels = (scheduled.claim_new_span(config, paths, as_json) if when_new_span
                            else (_claim_home(paths), config, None))
    log_path = None if verbose else os.path.join(
        paths.logs, f"run-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log")
    # With --json stdout carries the summary alone; Keras and Beam print progress there.
    keep_stdout = contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext()
    run_id, failed, summary = None, None, None
    with lock, keep_stdout, library_output_to(log_path) as terminal:
        out = Console(file=terminal, soft_wrap=True)
        if log_path:
            out.print(f"Library output goes to {log_path} (--verbose shows it here)")
        if labels:
            out.print(f"Scheduled: {escape(labels[run_status.TRIGGER])}")
        from pipelines import local_runner  # imports TensorFlow: after the redirect
        from pipelines.reports import runs

        try:
            run_id = local_runner.run(config, home, out, lock, labels).run_id
        except run_control.RunFailed as e:  # the summary below names the component and the reason
            run_id, failed = e.run_id, e.reason
        except Exception as e:  # before the run was recorded, e.g. generating the data
            absl_logging.error("Run failed before it started", exc_info=e)  # to the log
            failed = run_control.describe_error(e)
        if run_id:
            summary = runs.summarize(runs.connect(
                metadata_store.connection_config(config.metadata, home)), run_id)
    from pipelines.reports.terminal import print_summary

    if summary:
        emit(summary, as_json, print_summary)
    if failed is not None:
        if not summary or "failure" not in summary:
            console.print(f"[red]Run failed:[/] {escape(failed)}")
        sys.exit(1)


def _claim_home(paths: configs.Paths) -> run_control.HomeLock:
    """The home, writable and locked for this run; else a one-line error (no traceback)."""
    try:
        return run_control.claim_home(paths)
    except run_control.HomeError as e:
        raise click.ClickException(str(e)) from e


@click.command("compile")
@click.option("--kubeflow", "output", required=True, metavar="OUT.json",
              help="Write the KFP v2 pipeline spec here.")
@config_option
@overrides_option
@click.option("--pipeline-root", default="gs://YOUR_BUCKET/sightline/root", show_default=True)
@click.option("--data-root", default="gs://YOUR_BUCKET/sightline/data", show_default=True)
@click.option("--serving-dir", default="gs://YOUR_BUCKET/sightline/serving", show_default=True)
@click.option("--image", default=None, help="The pushed image built from the Dockerfile "
              "(default: a placeholder, ghcr.io/sightline/sightline:latest).")
def compile_cmd(
    output, config_name, overrides, pipeline_root, data_root, serving_dir, image
) -> None:
    """Compile the same DAG for Kubeflow Pipelines (offline; nothing is uploaded)."""
    config = load_config(config_name, overrides)
    from pipelines import kubeflow_runner

    image = image or kubeflow_runner.DEFAULT_IMAGE
    kubeflow_runner.compile_pipeline(
        config, output, pipeline_root, data_root, os.path.join(serving_dir, config.pipeline_name),
        image=image,
    )
    from pipelines import kubeflow_package  # the strict check: fails here, not on the cluster

    spec, note = kubeflow_package.write_companions(output, image, pipeline_root)
    console.print(f"wrote {output} (Vertex AI PipelineJob), {spec} (KFP PipelineSpec) and "
                  f"{note} (how to submit)")


@click.command("config")
@config_option
@overrides_option
def config_cmd(config_name, overrides) -> None:
    """Print every key --set accepts with its value (a preset, overrides applied)."""
    config = load_config(config_name, overrides)
    click.echo(json.dumps(configs.flat_settings(config), indent=2, default=list))
