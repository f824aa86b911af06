"""``sightline runs``, ``sightline report`` and ``sightline lineage``: what ML Metadata recorded."""

from __future__ import annotations

import click

from pipelines.cli.common import (
    console,
    emit,
    home_option,
    json_option,
    metadata_option,
    open_metadata,
    reports_dir,
    running_run_id,
)


@click.group("runs")
def runs_group() -> None:
    """Inspect pipeline runs recorded in ML Metadata."""


@runs_group.command("list")
@home_option
@metadata_option
@json_option
def runs_list(home, metadata, as_json) -> None:
    """Runs, newest first."""
    from pipelines.reports import runs, terminal

    emit(runs.list_runs(open_metadata(home, metadata), running_run_id(home)), as_json,
         terminal.print_runs)


@runs_group.command("show")
@click.argument("run_id", default="latest")
@home_option
@metadata_option
@json_option
def runs_show(run_id, home, metadata, as_json) -> None:
    """Summary of one run (default: the latest)."""
    from pipelines.reports import runs, terminal

    emit(runs.summarize(open_metadata(home, metadata), run_id, running_run_id(home)),
         as_json, terminal.print_summary)


@click.command()
@click.argument("run_id", default="latest")
@click.option("--out", "out_dir", default=None,
              help="Folder for report.html and report.json (default <home>/reports/<run id>).")
@home_option
@metadata_option
def report(run_id, out_dir, home, metadata) -> None:
    """An evaluation report for a run: slices, per-class AP, PR curves, calibration."""
    from pipelines.reports import evaluation, runs

    summary = runs.summarize(open_metadata(home, metadata), run_id, running_run_id(home))
    try:
        out_dir = out_dir or reports_dir(home, summary["run_id"].replace(":", "-"))
        html_path, json_path = evaluation.write(summary, out_dir)
    except evaluation.NoEvaluationError as e:
        raise click.ClickException(str(e)) from e
    console.print(f"report: {html_path}\n  json: {json_path}")


@click.command()
@click.argument("pushed_version")
@click.option("--run", "run_id", default=None,
              help="The run that pushed it, where several runs in a shared store did.")
@home_option
@metadata_option
@json_option
def lineage(pushed_version, run_id, home, metadata, as_json) -> None:
    """Walk ML Metadata from a pushed model version back to its Examples and their hashes."""
    from pipelines.reports import runs, terminal

    emit(runs.lineage(open_metadata(home, metadata), pushed_version, run_id), as_json,
         terminal.print_lineage)
