"""``sightline monitor``: serving traffic against the served model, with an exit code to alert on.

    sightline monitor --logs .sightline/logs/requests --window 1h
    sightline monitor --logs DIR --model 1764650000 --labels labelled/annotations.json

Exit status: 0 nothing crossed a threshold; 3 alarm (the report lists why); 2 usage or
input error (a bad flag, no logs, labels that cannot be read, a version ML Metadata does
not know), said in one line; 1 an unexpected failure (a traceback).
"""

from __future__ import annotations

import logging
import os
import sys

import click
from rich.markup import escape

from pipelines import configs
from pipelines.cli.common import (
    config_option,
    console,
    home_option,
    json_option,
    load_config,
    metadata_option,
    overrides_option,
)

EXIT_OK, EXIT_FAILURE, EXIT_INPUT, EXIT_ALARM = 0, 1, 2, 3


class InputError(click.ClickException):
    """Unusable input: exit status 2, like click's usage errors, without the usage text."""

    exit_code = EXIT_INPUT


@click.command("monitor")
@click.option("--logs", "logs", multiple=True, required=True, metavar="PATH",
              help="Request-log directory, file, glob or filename prefix (repeatable).")
@click.option("--window", default="1h", show_default=True,
              help="Window length (30m, 1h, 1d): the newest window is monitored and "
                   "compared with the one before it.")
@click.option("--model", "version", default=None, type=int, metavar="V",
              help="Monitor the answers of this version (default: the version that "
                   "answered most images in the window).")
@click.option("--model-name", default=None,
              help="The served model's name (default: the one that answered most).")
@click.option("--until", default=None, type=int, metavar="SECONDS",
              help="End of the window, seconds since the epoch (default: the newest record).")
@click.option("--labels", default=None, metavar="COCO_JSON",
              help="Labelled logged images (matched by the SHA-256 of the image file): "
                   "mAP and D-ECE against the evaluation.")
@click.option("--images", "images_root", default=None, metavar="DIR",
              help="Folder the labels' file_name entries are relative to (default: the "
                   "labels file's folder).")
@click.option("--out", "out_dir", default=None,
              help="Folder for report.html and report.json (default "
                   "<home>/reports/monitor-<model>-v<version>-<window end>).")
@click.option("--record/--no-record", default=True, show_default=True,
              help="Record the run in ML Metadata, linked to the served model.")
@click.option("--verbose", is_flag=True, help="Library output to the terminal too.")
@home_option
@metadata_option
@config_option
@overrides_option
@json_option
def monitor(logs, window, version, model_name, until, labels, images_root, out_dir, record,
            verbose, home, metadata, config_name, overrides, as_json) -> None:
    """Training/serving skew, drift and prediction drift of logged traffic, per slice; with
    --labels, production mAP and calibration. Exit 0 ok, 3 alarm, 2 bad input."""
    from pipelines.monitoring import traffic

    config = load_config(config_name, overrides)
    try:
        window_seconds = traffic.parse_window(window)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--window") from e
    if labels and not os.path.isfile(labels):
        raise InputError(f"--labels {labels}: no such file")
    home_dir = configs.home_dir(home)
    _quiet_libraries(home_dir, verbose)
    report, out = _run(home_dir, metadata or config.metadata, config, logs, window_seconds,
                       model_name, version, until, labels, images_root, out_dir, record)
    if as_json:
        import json

        click.echo(json.dumps({"alarm": report["alarm"], "alarms": report["alarms"],
                               "report": out}, indent=2))
    console.print(f"monitor report: {os.path.join(out, 'report.html')}")
    if report["alarm"]:
        console.print(f"[bold red]ALARM[/]: {len(report['alarms'])} finding(s)")
        for line in report["alarms"]:
            console.print(f"  - {escape(line)}")
        sys.exit(EXIT_ALARM)
    console.print(f"[green]OK[/]: {report['window']['images']} images of {report['model']} "
                  f"version {report['version']}, nothing crossed its threshold")


def _run(home: str, metadata: str | None, config: configs.RunConfig, logs: tuple[str, ...],
         window_seconds: int, model_name: str | None, version: int | None, until: int | None,
         labels: str | None, images_root: str | None, out_dir: str | None,
         record: bool) -> tuple[dict, str]:
    from data.coco import CocoFormatError
    from pipelines import metadata_store
    from pipelines.monitoring import baseline, monitor
    from pipelines.registry.store import UnknownModelError
    from pipelines.registry.store import connect as writable_store
    from pipelines.reports import monitoring, runs

    try:
        store = writable_store(metadata_store.connection_config(metadata, home))
        request = monitor.Request(logs=logs, window_seconds=window_seconds, model=model_name,
                                  version=version, labels=labels, images_root=images_root,
                                  end=until)
        report = monitor.run(store, request, config.monitor,
                             progress=lambda text: console.print(escape(text)))
    except (FileNotFoundError, ValueError, CocoFormatError, baseline.BaselineError,
            UnknownModelError, runs.NoRunsError, metadata_store.MetadataStoreError) as e:
        raise InputError(str(e)) from e
    out = out_dir or monitor.default_out_dir(home, report)
    monitoring.write(report, out)
    if record:
        execution_id = monitor.record(store, report, out)
        console.print(f"recorded in ML Metadata: {monitor.MONITOR_RUN} {execution_id}")
    return report, out


def _quiet_libraries(home: str, verbose: bool) -> None:
    """TensorFlow, TFDV and absl output to <home>/logs/monitor.log unless --verbose."""
    if verbose:
        return
    os.makedirs(os.path.join(home, "logs"), exist_ok=True)
    handler = logging.FileHandler(os.path.join(home, "logs", "monitor.log"))
    for name in ("tensorflow", "absl", "apache_beam", "tensorflow_data_validation"):
        library = logging.getLogger(name)
        library.handlers = [handler]
        library.propagate = False
