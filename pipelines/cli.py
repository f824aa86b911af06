"""The ``sightline`` command: one entry point for runs, data, schema, lineage and compile."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pipelines import configs

console = Console(stderr=True, soft_wrap=True)
_HOME = click.option(
    "--home", default=None, help="Sightline home (default $SIGHTLINE_HOME or ./.sightline)."
)
_JSON = click.option(
    "--json", "as_json", is_flag=True, help="Print machine-readable JSON on stdout."
)
_CONFIG = click.option(
    "--config", "config_name", default="default", show_default=True,
    type=click.Choice(sorted(configs.CONFIGS)), help="Preset in pipelines/configs.py.",
)
_OVERRIDES = click.option(
    "--set", "overrides", multiple=True, metavar="FIELD=VALUE",
    help="Override a config field, e.g. --set train.epochs=3 (repeatable).",
)


class _Main(click.Group):
    """Reports "nothing recorded yet" (no store, no such run) as a message, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except LookupError as e:
            from pipelines.runs import NoRunsError  # MLMD imports: only when it happened

            if isinstance(e, NoRunsError):
                raise click.ClickException(str(e)) from e
            raise


@click.group(cls=_Main)
def main() -> None:
    """Sightline: a TFX pipeline from labelled COCO images to a served object detector."""


# --- run -----------------------------------------------------------------------------
@main.command()
@_CONFIG
@_OVERRIDES
@click.option("--data", "data_root", default=None,
              help="A COCO dataset folder instead of the synthetic default.")
@click.option("--pattern", default=None,
              help="Annotations file within --data, e.g. 'span-{SPAN}/annotations.json'.")
@click.option("--beam-mode", type=click.Choice(["in_memory", "multi_processing"]), default=None,
              help="Beam DirectRunner mode.")
@click.option("--verbose", is_flag=True, help="Show TFX's own INFO logs.")
@_HOME
@_JSON
def run(config_name, overrides, data_root, pattern, beam_mode, verbose, home, as_json) -> None:
    """Run the whole DAG locally and print the run summary."""
    from pipelines import local_runner, runs

    overrides = list(overrides)
    for field, value in (("data_root", data_root), ("annotations_pattern", pattern),
                         ("beam_direct_running_mode", beam_mode)):
        if value:
            overrides.append(f"{field}={value}")
    config = configs.load(config_name, overrides)
    home = configs.home_dir(home)
    failed = None
    # Keras and Beam print progress on stdout: keep it for the summary alone with --json.
    quiet_stdout = contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext()
    try:
        with quiet_stdout:
            local_runner.run(config, home, console, verbose=verbose)
    except Exception as e:  # the summary below names the component and the reason
        failed = e
    store = runs.connect(configs.Paths(home, config.pipeline_name).metadata)
    summary = runs.summarize(store)
    if failed is not None and not summary.get("failure", {}).get("error", True):
        # TFX records no message for some failures (e.g. an unimportable run_fn).
        summary["failure"]["error"] = f"{type(failed).__name__}: {failed}"
    _emit(summary, as_json, render_summary)
    if failed is not None:
        if "failure" not in summary:
            console.print(f"[red]Run failed:[/] {escape(str(failed))}")
        sys.exit(1)


# --- runs / lineage --------------------------------------------------------------------
@main.group("runs")
def runs_group() -> None:
    """Inspect pipeline runs recorded in ML Metadata."""


@runs_group.command("list")
@_HOME
@_JSON
def runs_list(home, as_json) -> None:
    """Runs, newest first."""
    from pipelines import runs

    items = runs.list_runs(runs.connect(_metadata(home)))

    def render(rows):
        table = Table("run id", "pipeline", "status")
        for r in rows:
            table.add_row(r["run_id"], r["pipeline"], _status(r["status"]))
        console.print(table)

    _emit(items, as_json, render)


@runs_group.command("show")
@click.argument("run_id", default="latest")
@_HOME
@_JSON
def runs_show(run_id, home, as_json) -> None:
    """Summary of one run (default: the latest)."""
    from pipelines import runs

    _emit(runs.summarize(runs.connect(_metadata(home)), run_id), as_json, render_summary)


@main.command()
@click.argument("run_id", default="latest")
@click.option("--out", "out_dir", default=None,
              help="Folder for report.html and report.json (default <home>/reports/<run id>).")
@_HOME
def report(run_id, out_dir, home) -> None:
    """An evaluation report for a run: slices, per-class AP, PR curves, calibration."""
    from pipelines import report as report_lib
    from pipelines import runs

    summary = runs.summarize(runs.connect(_metadata(home)), run_id)
    try:
        out_dir = out_dir or os.path.join(configs.home_dir(home), "reports",
                                          summary["run_id"].replace(":", "-"))
        html_path, json_path = report_lib.write(summary, out_dir)
    except report_lib.NoEvaluationError as e:
        raise click.ClickException(str(e)) from e
    console.print(f"report: {html_path}\n  json: {json_path}")


@main.command()
@click.argument("pushed_version")
@_HOME
@_JSON
def lineage(pushed_version, home, as_json) -> None:
    """Walk ML Metadata from a pushed model version back to its Examples and their hashes."""
    from pipelines import runs

    record = runs.lineage(runs.connect(_metadata(home)), pushed_version)

    def render(rec):
        pushed = rec["pushed_model"]
        console.print(
            f"Pushed model version [bold]{pushed['version']}[/] at {pushed['destination']}"
        )
        for edge in rec["edges"]:
            console.print(
                f"  {edge['to_type']} {edge['to_artifact']} <- {edge['execution']} <- "
                f"{escape(edge['input'])}: {edge['from_type']} {edge['from_artifact']}"
            )
        for ex in rec["examples"]:
            console.print(f"Examples {ex['artifact_id']} (span {ex['span']}) {ex['uri']}")
            _print_splits(ex["splits"])

    _emit(record, as_json, render)


# --- data / schema / compile -------------------------------------------------------------
@main.group("data")
def data_group() -> None:
    """Datasets: generate the synthetic COCO dataset, report on a span's data and drift."""


@data_group.command("synth")
@click.argument("out_dir")
@click.option("--num-images", default=3000, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--scenario", default="default", show_default=True,
              help="default, night_heavy, new_camera, loose_boxes, unknown_class.")
@click.option("--spans", default=0, help="Write span-1..span-N sub-folders (seed + span).")
def data_synth(out_dir, num_images, seed, scenario, spans) -> None:
    """Write a synthetic COCO dataset (annotations.json + images/) to OUT_DIR."""
    from data import synth

    targets = [(out_dir, seed, 1)] if not spans else [
        (os.path.join(out_dir, f"span-{s}"), seed + s, 1 + (s - 1) * num_images)
        for s in range(1, spans + 1)
    ]
    for folder, span_seed, first_id in targets:
        path = synth.generate(folder, num_images=num_images, seed=span_seed, scenario=scenario,
                              first_image_id=first_id, show_progress=True)
        console.print(f"wrote {path}")


@data_group.command("report")
@click.argument("span", default="latest")
@click.option("--run", "run_id", default=None,
              help="Only this pipeline run's DriftCheck (a run id, or 'latest').")
@click.option("--out", "out_dir", default=None,
              help="Folder for report.html and report.json "
                   "(default <home>/reports/data-span-<span>-<run id>).")
@_HOME
def data_report(span, run_id, out_dir, home) -> None:
    """One span's data as DriftCheck saw it: drift per feature, box quality, histograms,
    sample images with their boxes, TFDV's Facets overview.

    SPAN is a span number or 'latest' (the highest span DriftCheck checked); the newest
    DriftCheck of that span is reported, of run --run if given."""
    from pipelines import data_report as data_report_lib
    from pipelines import runs

    try:
        span = data_report_lib.parse_span(span)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="SPAN") from e
    try:
        report_data = data_report_lib.build(runs.connect(_metadata(home)), span, run_id)
        out_dir = out_dir or os.path.join(configs.home_dir(home), "reports",
                                          data_report_lib.default_dir_name(report_data))
        html_path, json_path = data_report_lib.write(report_data, out_dir)
    except (runs.NoRunsError, data_report_lib.NoDriftCheckError) as e:
        raise click.ClickException(str(e)) from e
    console.print(f"data report: {html_path}\n        json: {json_path}")
    console.print(f"span {report_data['span']} of run {report_data['run_id']}: "
                  f"{escape(report_data['verdict']['text'])}")


@main.group("schema")
def schema_group() -> None:
    """The curated TFDV schema."""


@schema_group.command("infer")
@click.argument("data_dir")
@click.option("--pattern", default="annotations.json", show_default=True)
@click.option("--out", default="schema.draft.pbtxt", show_default=True)
def schema_infer(data_dir, pattern, out) -> None:
    """Draft a schema from a COCO dataset, for review before it replaces schemas/schema.pbtxt."""
    import tensorflow_data_validation as tfdv

    from schemas import curate

    schema, quarantined = curate.draft_from_dataset(os.path.join(data_dir, pattern))
    tfdv.write_schema_text(schema, out)
    console.print(f"wrote {out} ({quarantined} records quarantined and not used); review the "
                  f"diff against {curate.DEFAULT_SCHEMA_PATH} before adopting it")


@main.command("compile")
@click.option("--kubeflow", "output", required=True, metavar="OUT.json",
              help="Write the KFP v2 pipeline spec here.")
@_CONFIG
@_OVERRIDES
@click.option("--pipeline-root", default="gs://YOUR_BUCKET/sightline/root", show_default=True)
@click.option("--data-root", default="gs://YOUR_BUCKET/sightline/data", show_default=True)
@click.option("--serving-dir", default="gs://YOUR_BUCKET/sightline/serving", show_default=True)
@click.option("--image", default=None, help="Container image with Sightline installed.")
def compile_cmd(
    output, config_name, overrides, pipeline_root, data_root, serving_dir, image
) -> None:
    """Compile the same DAG for Kubeflow Pipelines (offline; nothing is uploaded)."""
    from pipelines import kubeflow_runner

    config = configs.load(config_name, overrides)
    kubeflow_runner.compile_pipeline(
        config, output, pipeline_root, data_root, os.path.join(serving_dir, config.pipeline_name),
        image=image or kubeflow_runner.DEFAULT_IMAGE,
    )
    console.print(f"wrote {output}")


# --- rendering -----------------------------------------------------------------------------
HEADLINE_METRICS = ("mAP", "mAP50", "mAP75", "AR100", "example_count")


def _metadata(home: str | None) -> str:
    return os.path.join(configs.home_dir(home), "metadata.sqlite")


def _emit(value: Any, as_json: bool, render) -> None:
    if as_json:
        click.echo(json.dumps(value, indent=2, sort_keys=True))
    else:
        render(value)


def _status(status: str) -> str:
    color = {"succeeded": "green", "complete": "green", "cached": "green", "failed": "red"}
    return f"[{color.get(status, 'yellow')}]{status}[/]"


def _print_splits(splits: dict[str, Any]) -> None:
    for split, info in splits.items():
        console.print(
            f"  {split:<6} {info['num_examples']:>6} examples  sha256 {info['content_hash']}"
        )


def _print_drift(drift: dict[str, Any]) -> None:
    if drift["baseline_span"] is None:
        console.print("drift: no previous span to compare with")
    else:
        moved = drift["drifted_features"] + [f"boxes of {c}" for c in drift["box_fit_changes"]]
        console.print(f"drift vs the previous data (span {drift['baseline_span']}): "
                      + (f"[yellow]{escape(', '.join(moved))}[/]" if moved else "none"))
    for kind in ("duplicate_boxes", "tiny_boxes"):
        if drift[kind]["count"]:
            ids = ", ".join(drift[kind]["example_ids"][:5])
            name = kind.replace("_", " ")
            console.print(f"[yellow]{name}:[/] {drift[kind]['count']} (e.g. {ids})")


def render_summary(summary: dict[str, Any]) -> None:
    """The run summary as tables a person reads in a terminal."""
    console.rule(f"run {summary['run_id']} · {summary['pipeline']} · {_status(summary['status'])}")
    table = Table("component", "status", "seconds")
    for c in summary["components"]:
        table.add_row(c["component"], _status(c["status"]), f"{c['seconds']:.1f}")
    console.print(table)
    if "failure" in summary:
        failure = summary["failure"]
        console.print(f"[red]{failure['component']} failed:[/] {escape(failure['error'])}")
    examples = summary.get("examples")
    if examples:
        _print_splits(examples["splits"])
        console.print(f"quarantined {examples['quarantined']} {examples['quarantine_reasons']}  "
                      f"(report: {examples['quarantine_report']})")
    drift = summary.get("drift")
    if drift:
        _print_drift(drift)
    model = summary.get("model")
    if model and model["hparams"]:
        console.print("hparams: " + escape(", ".join(
            f"{k}={v}" for k, v in model["hparams"].items())))
    evaluation = summary.get("evaluation")
    if evaluation:
        overall = evaluation["overall"]
        console.print("metrics (overall): " + ", ".join(
            f"{k} {overall[k]:.3f}" for k in HEADLINE_METRICS if k in overall))
        baseline = evaluation.get("baseline_overall")
        if baseline:
            console.print("latest blessed model: " + ", ".join(
                f"{k} {baseline[k]:.3f}" for k in HEADLINE_METRICS if k in baseline))
        else:
            console.print("no blessed model yet: judged by the mAP floor alone")
        for failure in evaluation["failed_thresholds"]:
            message = escape(failure["message"])
            console.print(f"[red]gate failed[/] on {failure['slice']}: {message}")
    if "blessed" in summary:
        console.print(f"blessed: {'yes' if summary['blessed'] else '[red]no[/]'}")
    pushed = summary.get("pushed")
    if pushed and pushed["pushed"]:
        console.print(f"pushed: version {pushed['version']} -> {pushed['destination']}")
    elif pushed:
        console.print("pushed: [yellow]no[/] (the model was not blessed)")
    variants = summary.get("edge_variants")
    if variants:
        table = Table("edge variant", "KB", "mAP", "mAP50", "D-ECE", "mAP change")
        for name, v in variants.items():
            table.add_row(name, f"{v['size_bytes'] / 1024:.0f}", f"{v['mAP']:.3f}",
                          f"{v['mAP50']:.3f}", f"{v['D-ECE']:.3f}", f"{v['mAP_change']:+.4f}")
        console.print(table)
    edge = summary.get("edge_push")
    if edge and edge["pushed"]:
        console.print(f"edge bundle: {edge['variant']} version {edge['version']} -> "
                      f"{edge['destination']}")
    if edge:
        console.print("edge selection: " + escape(edge["reason"]))
