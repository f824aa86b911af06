"""``sightline replay``, ``select``, ``index`` and ``similar``: feedback from served traffic.

    sightline replay --logs DIR --model V [--min-agreement 0.9] [--out DIR] [--json]
    sightline index --model V [--logs DIR]          # crop embeddings of training data + logs
    sightline select --logs DIR --budget N --out DIR [--model V]
    sightline similar IMAGE [--box ymin,xmin,ymax,xmax] [-k 10]

``--model`` is a registry version of the pipeline (``--pipeline``, default the config's
``pipeline_name``) or an exported SavedModel folder. Library output (TensorFlow, faiss)
goes to ``<home>/logs/feedback-<command>.log`` unless ``--verbose``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any, TextIO

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pipelines import configs
from pipelines.cli.common import (
    config_option,
    emit,
    home_option,
    json_option,
    load_config,
    metadata_option,
    overrides_option,
)

GATE_FAILED = 3  # exit status of a replay whose agreement is below --min-agreement


def model_options(command: Callable) -> Callable:
    """--home, --metadata, --config, --set, --pipeline and --verbose; passes ``context``."""

    @home_option
    @metadata_option
    @config_option
    @overrides_option
    @click.option("--pipeline", default=None,
                  help="Pipeline (registry model) whose versions --model names; default: the "
                       "config's pipeline_name.")
    @click.option("--verbose", is_flag=True, help="Library output on the terminal.")
    @functools.wraps(command)
    def wrapper(home, metadata, config_name, overrides, pipeline, verbose, **kwargs):
        config = load_config(config_name, [*overrides, *([f"metadata={metadata}"] if metadata
                                                           else [])])
        kwargs["context"] = _Context(configs.home_dir(home), pipeline or config.pipeline_name,
                                     config, verbose)
        return command(**kwargs)

    return wrapper


class _Context:
    """What the commands share: the home, the registry (opened only when needed)."""

    def __init__(self, home: str, pipeline: str, config: configs.RunConfig, verbose: bool):
        self.home, self.pipeline, self.config, self.verbose = home, pipeline, config, verbose

    @functools.cached_property
    def registry(self):
        from pipelines.registry.registry import Registry

        return Registry(self.home, self.pipeline, self.config.release,
                        metadata=self.config.metadata)

    def model(self, spec: str):
        from pipelines.feedback import models

        try:
            return models.resolve(spec, lambda: self.registry)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--model") from e

    def log_files(self, logs: tuple[str, ...]) -> list[str]:
        from serving import log_reader

        where = list(logs) or [self.registry.log_prefix()]
        files = log_reader.log_files(where)
        if not files:
            raise click.ClickException(f"no request log files at {', '.join(where)}")
        return files

    @contextlib.contextmanager
    def quiet(self, command: str) -> Iterator[TextIO]:
        """Library output to the home's log (not with --verbose); yields the terminal."""
        from pipelines.console import library_output_to

        log_path = None if self.verbose else os.path.join(self.home, "logs",
                                                          f"feedback-{command}.log")
        with library_output_to(log_path) as terminal:
            yield terminal


def _progress(terminal: TextIO, unit: str, total: int | None = None):
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, file=terminal, leave=False,
                disable=not terminal.isatty())


logs_option = click.option("--logs", "logs", multiple=True,
                           help="Request log files, folders, globs or a log prefix "
                                "(repeatable; default: the pipeline's models.config entry).")
served_model_option = click.option(
    "--served-model", default=None,
    help="Only requests to this served model name (default: every request in the logs).")


# ----------------------------------------------------------------------------- replay


@click.command("replay")
@logs_option
@click.option("--model", "model_spec", required=True,
              help="Version to replay through (a number) or an exported SavedModel folder.")
@served_model_option
@click.option("--min-score", default=None, type=float,
              help="Ignore detections below this (default release.compare_min_score).")
@click.option("--iou", default=0.5, show_default=True, help="IoU for a matched detection.")
@click.option("--min-agreement", default=None, type=float,
              help="Exit 3 below this share of agreeing images (default "
                   "release.min_agreement).")
@click.option("--out", "out_dir", default=None, help="Write report.html and report.json here.")
@json_option
@model_options
def replay_cmd(logs, model_spec, served_model, min_score, iou, min_agreement, out_dir,
               as_json, context) -> None:
    """Re-run logged requests through --model and compare with what was served: identical
    outputs, matched detections, score deltas, latency. Exits 3 when agreement is below
    --min-agreement, so it can gate a release."""
    from pipelines.feedback import replay
    from serving import log_reader

    release = context.config.release
    min_score = release.compare_min_score if min_score is None else min_score
    min_agreement = release.min_agreement if min_agreement is None else min_agreement
    model = context.model(model_spec)
    files = context.log_files(logs)
    read = log_reader.LogRead(files)
    with context.quiet("replay") as terminal:
        servable = replay.load(model)
        with _progress(terminal, "req") as bar:
            report = replay.replay(log_reader.read_requests(read), servable, model, min_score,
                                   iou, served_model, bar.update)
    report["logs"] = {"files": files, "records": read.records, "unreadable": read.unreadable}
    report["min_agreement"] = min_agreement
    report["problems"] = replay.gate(report, min_agreement)
    if out_dir:
        from pipelines.feedback.report import write_replay

        report["written"] = list(write_replay(report, out_dir))
    emit(report, as_json, _print_replay)
    if report["problems"]:
        sys.exit(GATE_FAILED)


def _print_replay(out: Console, r: dict[str, Any]) -> None:
    req, img = r["requests"], r["images"]
    out.print(f"replayed {req['replayed']} of {req['read']} requests ({img['replayed']} images) "
              f"through {escape(r['model']['name'])} ({escape(r['model']['path'])})")
    if req["not_replayable_redacted"]:
        out.print(f"[yellow]not replayable:[/] {req['not_replayable_redacted']} requests "
                  f"({img['redacted']} images) were logged without their images "
                  "(serve with --request_log_include_images)")
    for message, count in req["failed"].items():
        out.print(f"[red]failed:[/] {count} requests: {escape(message)}")
    for problem in r["logs"]["unreadable"]:
        out.print(f"[yellow]unreadable:[/] {escape(problem)}")
    table = Table("measure", "value")
    shares = (("identical outputs", r["identical_share"], img["identical"]),
              (f"agreeing (class + IoU >= {r['iou']}, score >= {r['min_score']})",
               r["agreement"], img["agreeing"]))
    for name, share, count in shares:
        table.add_row(name, "–" if share is None else f"{share:.2%} ({count})")
    delta = r["score_delta"]
    table.add_row("matched detections", str(delta["matched"]))
    table.add_row("score delta mean / mean |.| / max |.|",
                  " / ".join("–" if delta[k] is None else f"{delta[k]:+.4f}"
                             for k in ("mean", "mean_abs", "max_abs")))
    for side in ("served", "replayed"):
        lat = r["latency_ms"][side]
        table.add_row(f"latency {side} p50 / p95 ms",
                      "–" if lat["p50"] is None else f"{lat['p50']:.1f} / {lat['p95']:.1f}")
    out.print(table)
    if r["classes"]:
        classes = Table("class", "matched", "mean score delta", "unmatched served",
                        "unmatched replayed")
        for name, row in r["classes"].items():
            d = row["mean_score_delta"]
            classes.add_row(escape(name), str(row["matched"]), "–" if d is None else f"{d:+.4f}",
                            str(row["unmatched_served"]), str(row["unmatched_replayed"]))
        out.print(classes)
    for path in r.get("written", []):
        out.print(f"wrote {path}")
    if r["problems"]:
        for problem in r["problems"]:
            out.print(f"[red]gate failed:[/] {escape(problem)}")
    else:
        out.print(f"[green]agreement at or above {r['min_agreement']:.2%}[/]")
