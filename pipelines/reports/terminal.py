"""Run summaries, run lists and lineage as tables a person reads in a terminal.

Everything shown comes from ``runs`` (ML Metadata); text that came from the user's data
(class names, file names, error messages) is escaped for rich's markup.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from components import release


def status(value: str) -> str:
    """A run or component status, coloured."""
    color = {"succeeded": "green", "complete": "green", "cached": "green", "failed": "red",
             "interrupted": "magenta"}
    return f"[{color.get(value, 'yellow')}]{escape(value)}[/]"


def print_runs(console: Console, rows: list[dict[str, Any]]) -> None:
    table = Table("run id", "pipeline", "status")
    for r in rows:
        table.add_row(escape(r["run_id"]), escape(r["pipeline"]), status(r["status"]))
    console.print(table)


def print_splits(console: Console, splits: dict[str, Any]) -> None:
    for split, info in splits.items():
        console.print(f"  {escape(split):<6} {info['num_examples']:>6} examples  "
                      f"sha256 {info['content_hash']}")


def print_lineage(console: Console, record: dict[str, Any]) -> None:
    pushed = record["pushed_model"]
    console.print(f"Pushed model version [bold]{pushed['version']}[/] at "
                  f"{escape(pushed['destination'])}")
    for edge in record["edges"]:
        console.print(
            f"  {edge['to_type']} {edge['to_artifact']} <- {edge['execution']} <- "
            f"{escape(edge['input'])}: {edge['from_type']} {edge['from_artifact']}"
        )
    for ex in record["examples"]:
        console.print(f"Examples {ex['artifact_id']} (span {ex['span']}) {escape(ex['uri'])}")
        print_splits(console, ex["splits"])


def print_summary(console: Console, summary: dict[str, Any]) -> None:
    """The run summary: components, data, drift, model, evaluation, pushes."""
    console.rule(f"run {escape(summary['run_id'])} · {escape(summary['pipeline'])} · "
                 f"{status(summary['status'])}")
    table = Table("component", "status", "seconds")
    for c in summary["components"]:
        table.add_row(c["component"], status(c["status"]), f"{c['seconds']:.1f}")
    console.print(table)
    _print_start_and_end(console, summary)
    examples = summary.get("examples")
    if examples:
        print_splits(console, examples["splits"])
        console.print(f"quarantined {examples['quarantined']} "
                      f"{escape(str(examples['quarantine_reasons']))}  "
                      f"(report: {escape(examples['quarantine_report'])})")
    if summary.get("drift"):
        _print_drift(console, summary["drift"])
    model = summary.get("model")
    if model and model["hparams"]:
        console.print("hparams: " + escape(", ".join(
            f"{k}={v}" for k, v in model["hparams"].items())))
    if summary.get("evaluation"):
        _print_evaluation(console, summary["evaluation"])
    if "blessed" in summary:
        console.print(f"blessed: {'yes' if summary['blessed'] else '[red]no[/]'}")
    _print_pushes(console, summary)


def _print_start_and_end(console: Console, summary: dict[str, Any]) -> None:
    """Whether the run was resumed or new, and why it failed or stopped."""
    if summary.get("trigger"):
        console.print(f"scheduled: {escape(summary['trigger']['reason'])}")
    start = summary.get("start")
    if start:
        how = "[yellow]resumed[/]" if start["resumed"] else "new run"
        console.print(how + (f": {escape(start['note'])}" if start["note"] else ""))
    if "failure" in summary:
        failure = summary["failure"]
        who = failure["component"] or "The run"
        console.print(f"[red]{escape(who)} failed:[/] {escape(failure['error'])}")
    if "interruption" in summary:
        stop = summary["interruption"]
        console.print(f"[magenta]interrupted during {escape(stop['component'])}:[/] "
                      f"{escape(stop['reason'])}")


def _print_drift(console: Console, drift: dict[str, Any]) -> None:
    if drift["baseline_span"] is None:
        console.print("drift: no previous span to compare with")
    else:
        moved = drift["drifted_features"] + [f"boxes of {c}" for c in drift["box_fit_changes"]]
        console.print(f"drift vs the previous data (span {drift['baseline_span']}): "
                      + (f"[yellow]{escape(', '.join(moved))}[/]" if moved else "none"))
    for kind in ("duplicate_boxes", "tiny_boxes"):
        if drift[kind]["count"]:
            ids = escape(", ".join(drift[kind]["example_ids"][:5]))
            console.print(f"[yellow]{kind.replace('_', ' ')}:[/] {drift[kind]['count']} "
                          f"(e.g. {ids})")


def _metrics_line(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.0f}" if float(v).is_integer() and v > 1 else f"{k} {v:.3f}"
                     for k, v in release.headline(metrics).items())


def _print_evaluation(console: Console, evaluation: dict[str, Any]) -> None:
    console.print("metrics (overall): " + _metrics_line(evaluation["overall"]))
    baseline = evaluation.get("baseline_overall")
    if baseline:
        console.print("latest blessed model: " + _metrics_line(baseline))
    else:
        console.print("no blessed model yet: judged by the mAP floor alone")
    for failure in evaluation["failed_thresholds"]:
        console.print(f"[red]gate failed[/] on {escape(failure['slice'])}: "
                      f"{escape(failure['message'])}")


def _print_pushes(console: Console, summary: dict[str, Any]) -> None:
    pushed = summary.get("pushed")
    if pushed and pushed["pushed"]:
        console.print(f"pushed: version {pushed['version']} -> {escape(pushed['destination'])}")
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
                      f"{escape(edge['destination'])}")
    if edge:
        console.print("edge selection: " + escape(edge["reason"]))
