"""``sightline runs``, ``sightline report`` and ``sightline lineage``: what ML Metadata recorded."""

from __future__ import annotations

import click

from pipelines.cli.common import (
    console,
    emit,
    home_option,
    json_option,
    metadata_path,
    reports_dir,
    running_run_id,
)


@click.group("runs")
def runs_group() -> None:
    """Inspect pipeline runs recorded in ML Metadata."""


@runs_group.command("list")
@home_option
@json_option
def runs_list(home, as_json) -> None:
    """Runs, newest first."""
    from pipelines.reports import runs, terminal

    emit(runs.list_runs(runs.connect(metadata_path(home)), running_run_id(home)), as_json,
         terminal.print_runs)


@runs_group.command("show")
@click.argument("run_id", default="latest")
@home_option
@json_option
def runs_show(run_id, home, as_json) -> None:
    """Summary of one run (default: the latest)."""
    from pipelines.reports import runs, terminal

    emit(runs.summarize(runs.connect(metadata_path(home)), run_id, running_run_id(home)),
         as_json, terminal.print_summary)


@click.command()
@click.argument("run_id", default="latest")
@click.option("--out", "out_dir", default=None,
              help="Folder for report.html and report.json (default <home>/reports/<run id>).")
@home_option
def report(run_id, out_dir, home) -> None:
    """An evaluation report for a run: slices, per-class AP, PR curves, calibration."""
    from pipelines.reports import evaluation, runs

    summary = runs.summarize(runs.connect(metadata_path(home)), run_id, running_run_id(home))
    try:
        out_dir = out_dir or reports_dir(home, summary["run_id"].replace(":", "-"))
        html_path, json_path = evaluation.write(summary, out_dir)
    except evaluation.NoEvaluationError as e:
        raise click.ClickException(str(e)) from e
    console.print(f"report: {html_path}\n  json: {json_path}")


@click.command()
@click.argument("pushed_version")
@home_option
@json_option
def lineage(pushed_version, home, as_json) -> None:
    """Walk ML Metadata from a pushed model version back to its Examples and their hashes."""
    from pipelines.reports import runs, terminal

    emit(runs.lineage(runs.connect(metadata_path(home)), pushed_version), as_json,
         terminal.print_lineage)
