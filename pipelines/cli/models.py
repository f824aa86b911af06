"""``sightline models``: the release registry (stages, approvals, promotion, rollback,
comparisons, model cards), kept in ML Metadata and written to TF Serving's models.config.

    sightline models list [--json]
    sightline models show V [--json]                 # history, and the model card
    sightline models approve V --reason "reviewed the report"
    sightline models promote V --to canary|stable [--reason ...]
    sightline models compare V1 V2 [--logs DIR]      # stable V1 vs canary V2, recorded
    sightline models rollback [--to V] --reason "..."
    sightline models retire V --reason "..."         # a candidate or canary, out
    sightline models sync                            # models.config from the records
    sightline models card V [--out DIR]

The model is the pipeline named by ``--config``/``--set pipeline_name=...`` (or
``--model``); ``release.*`` settings (``sightline config``) set what stable needs.
Who acts is ``--as`` or the OS user, and is recorded.
"""

from __future__ import annotations

import functools
import getpass
from collections.abc import Callable
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from pipelines import configs
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


def registry_options(command: Callable) -> Callable:
    """--home, --metadata, --config, --set and --model on every sub-command; passes
    ``registry``."""

    @home_option
    @metadata_option
    @config_option
    @overrides_option
    @click.option("--model", default=None,
                  help="Model (pipeline) name; default: the config's pipeline_name.")
    @functools.wraps(command)
    def wrapper(home, metadata, config_name, overrides, model, **kwargs):
        from pipelines.registry.registry import Registry

        config = load_config(config_name, [*overrides, *([f"metadata={metadata}"] if metadata
                                                           else [])])
        kwargs["registry"] = Registry(configs.home_dir(home), model or config.pipeline_name,
                                      config.release, metadata=config.metadata)
        return _refusals_as_errors(command, **kwargs)

    return wrapper


actor_option = click.option("--as", "actor", default=None,
                            help="Who acts (recorded); default: the OS user.")


def _actor(actor: str | None) -> str:
    if actor:
        return actor
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _refusals_as_errors(command: Callable, **kwargs: Any) -> Any:
    from pipelines.registry.registry import RegistryBusyError
    from pipelines.registry.rules import RefusedError
    from pipelines.registry.store import UnknownModelError

    try:
        return command(**kwargs)
    except (RefusedError, UnknownModelError, RegistryBusyError, ValueError) as e:
        raise click.ClickException(str(e)) from e


@click.group("models")
def models_group() -> None:
    """Release pushed versions: candidate -> canary -> stable, approvals, rollback, cards."""


@models_group.command("list")
@registry_options
@json_option
def models_list(registry, as_json) -> None:
    """Every pushed version with its stage, blessing, approval and headline metrics."""
    rows = registry.versions()
    emit({"model": registry.model, "versions": rows,
          "models_config": registry.config_status()}, as_json, _print_list)


@models_group.command("show")
@click.argument("version")
@registry_options
@json_option
@click.option("--card/--no-card", default=True, show_default=True,
              help="Also write the model card (HTML + JSON).")
@click.option("--out", "out_dir", default=None,
              help="Folder for the card (default <home>/reports/model-cards/<model>/<V>).")
def models_show(version, registry, as_json, card, out_dir) -> None:
    """One version: stage, blessing, approvals, stage history, comparisons, model card."""
    row = registry.version(version)
    row["models_config"] = registry.config_status()
    if card:
        row["model_card"] = _write_card(registry, version, out_dir)
    emit(row, as_json, _print_show)


@models_group.command("card")
@click.argument("version")
@registry_options
@click.option("--out", "out_dir", default=None,
              help="Folder (default <home>/reports/model-cards/<model>/<V>).")
def models_card(version, registry, out_dir) -> None:
    """Write the model card of VERSION (model_card.html and model_card.json)."""
    _print_card(console, _write_card(registry, version, out_dir))


def _write_card(registry, version: str, out_dir: str | None) -> dict[str, str]:
    import logging

    from pipelines.registry import card

    logging.getLogger("tensorflow").setLevel(logging.ERROR)  # TFMA's deprecation notices
    built = card.build(registry, version)
    html_path, json_path = card.write(
        built, out_dir or card.default_dir(registry.home, registry.model, version))
    return {"html": html_path, "json": json_path, "summary": card.summary(built)}


@models_group.command("approve")
@click.argument("version")
@click.option("--reason", required=True, help="Why (what was reviewed); recorded.")
@actor_option
@registry_options
def models_approve(version, reason, actor, registry) -> None:
    """Record an approval of VERSION (needed, after its blessing, to promote it to stable)."""
    [record_id] = registry.approve(version, _actor(actor), reason)
    console.print(f"approved version {escape(version)} as {escape(_actor(actor))} "
                  f"(ML Metadata execution {record_id})")


@models_group.command("promote")
@click.argument("version")
@click.option("--to", "stage", required=True, type=click.Choice(["canary", "stable"]))
@click.option("--reason", default="", help="Why; recorded.")
@actor_option
@registry_options
@json_option
def models_promote(version, stage, reason, actor, registry, as_json) -> None:
    """Make VERSION the canary, or (from canary, approved, with canary evidence) stable."""
    ids = registry.promote(version, stage, _actor(actor), reason)
    _changed(registry, ids, as_json)


@models_group.command("rollback")
@click.option("--to", "target", default=None,
              help="A version that was stable before (default: the previous stable).")
@click.option("--reason", default="rollback", show_default=True, help="Why; recorded.")
@actor_option
@registry_options
@json_option
def models_rollback(target, reason, actor, registry, as_json) -> None:
    """Put the previous stable version back (the current one is retired)."""
    ids = registry.rollback(_actor(actor), reason, target)
    _changed(registry, ids, as_json)


@models_group.command("retire")
@click.argument("version")
@click.option("--reason", required=True, help="Why; recorded.")
@actor_option
@registry_options
@json_option
def models_retire(version, reason, actor, registry, as_json) -> None:
    """Retire a candidate or the canary (the canary label goes away)."""
    ids = registry.retire(version, _actor(actor), reason)
    _changed(registry, ids, as_json)


@models_group.command("sync")
@registry_options
@json_option
def models_sync(registry, as_json) -> None:
    """Write models.config from ML Metadata (after a command died between the two)."""
    emit(registry.sync(), as_json, _print_config_status)


@models_group.command("compare")
@click.argument("baseline")
@click.argument("candidate")
@click.option("--logs", "logs", multiple=True,
              help="Request log files, folders, globs or a log prefix (repeatable; default: "
                   "the model's logging_config in models.config).")
@click.option("--min-score", default=None, type=float,
              help="Ignore detections scoring below this (default release.compare_min_score).")
@click.option("--record/--no-record", default=True, show_default=True,
              help="Record the comparison in ML Metadata as evidence for promotion.")
@click.option("--reason", default="", help="Recorded with the comparison.")
@actor_option
@registry_options
@json_option
def models_compare(baseline, candidate, logs, min_score, record, reason, actor, registry,
                   as_json) -> None:
    """Compare CANDIDATE's answers with BASELINE's on the same requests (shadow pairs, or
    the same images) from request logs: detection agreement, score shift, latency."""
    from pipelines.registry import compare, rules
    from serving import log_reader

    where = list(logs) or [registry.log_prefix()]
    files = log_reader.log_files(where)
    if not files:
        raise click.ClickException(f"no request log files at {', '.join(where)} (serve with "
                                   "request logging, e.g. the registry's models.config)")
    snap = registry.snapshot()
    for version in (baseline, candidate):
        registry.require(snap, version, "compare")
    score = registry.settings.compare_min_score if min_score is None else min_score
    read = compare.read_logs(files, registry.model, (int(baseline), int(candidate)), score)
    report = compare.compare(read, registry.model, int(baseline), int(candidate),
                             registry.class_names(candidate), score)
    report["problems"] = rules.check_report(report, registry.settings)
    if record:
        [report["recorded_as"]] = registry.record_comparison(report, _actor(actor), reason)
    emit(report, as_json, _print_compare)


# --------------------------------------------------------------------------- rendering


def _changed(registry, ids: list[int], as_json: bool) -> None:
    snap = registry.snapshot()
    changed = [r.to_json() for r in snap.records if r.id in set(ids)]
    emit({"recorded": changed, "stable": snap.stable, "canary": snap.canary,
          "models_config": registry.config_status(snap)}, as_json, _print_changed)


def _print_changed(out, result: dict[str, Any]) -> None:
    for r in result["recorded"]:
        out.print(f"version {r['version']}: {r['from_stage']} -> [bold]{r['to_stage']}[/] "
                  f"({escape(r['action'])} by {escape(r['actor'])}, execution {r['id']})")
    out.print(f"stable: {result['stable'] or '-'}  canary: {result['canary'] or '-'}")
    _print_config_status(out, result["models_config"])


def _print_config_status(out, status: dict[str, Any]) -> None:
    if status["in_sync"]:
        out.print(f"models.config: {escape(status['path'])} (servers polling it follow)")
    else:
        out.print(f"[yellow]models.config {escape(status['path'])} is behind the registry "
                  f"({escape(str(status.get('file', status.get('error'))))} vs "
                  f"{status['registry']}): run `sightline models sync`[/]")


def _print_list(out, result: dict[str, Any]) -> None:
    from pipelines.registry.rules import when

    table = Table("version", "stage", "blessed", "approved", "mAP", "pushed", "run")
    for row in result["versions"]:
        m = row["metrics"].get("mAP")
        table.add_row(row["version"], _stage(row["stage"]), "yes" if row["blessed"] else
                      "[red]no[/]", "yes" if row["approved"] else "-",
                      "-" if m is None else f"{m:.3f}", when(row["pushed_at"]),
                      escape(row["run_id"]))
    out.print(f"model {escape(result['model'])}")
    out.print(table)
    _print_config_status(out, result["models_config"])


def _stage(stage: str) -> str:
    color = {"stable": "green", "canary": "yellow", "retired": "dim"}.get(stage, "white")
    return f"[{color}]{stage}[/]"


def _print_show(out, row: dict[str, Any]) -> None:
    from pipelines.registry.rules import when

    out.rule(f"{escape(row['model'])} version {row['version']} · {_stage(row['stage'])}")
    out.print(f"blessed: {'yes' if row['blessed'] else '[red]no[/]'}   approved: "
              f"{'yes' if row['approved'] else 'no'}   pushed {when(row['pushed_at'])} by run "
              f"{escape(row['run_id'])}\npath: {escape(row['path'])}")
    if row["metrics"]:
        out.print("metrics: " + ", ".join(f"{k} {v:.4g}" for k, v in row["metrics"].items()))
    table = Table("when", "what", "who", "why")
    for r in row["history"]:
        what = {"transition": f"{r.get('from_stage')} -> {r.get('to_stage')}",
                "approval": "approved",
                "comparison": f"compared with {r.get('baseline')} ({r.get('mode')}): "
                              + ("passed" if r.get("passed") else "failed")}[r["kind"]]
        if r["kind"] == "comparison" and r["baseline"] == row["version"]:
            what = f"baseline of a comparison with {r['version']}"
        table.add_row(when(r["time"]), escape(what), escape(r["actor"]), escape(r["reason"]))
    out.print(table if row["history"] else "history: none (a candidate since its push)")
    _print_config_status(out, row["models_config"])
    if "model_card" in row:
        _print_card(out, row["model_card"])


def _print_card(out, card: dict[str, Any]) -> None:
    facts = card["summary"]
    data = facts["data"]
    out.rule("model card")
    out.print(f"for: {escape(facts['for'])}")
    for line in facts["not_for"]:
        out.print(f"not for: {escape(line)}")
    out.print(f"data: span {data['span']}, examples "
              + ", ".join(f"{k} {v}" for k, v in data["splits"].items())
              + f"; {data['quarantined_images']} of {data['listed_images']} listed images "
              "quarantined")
    out.print("metrics: " + ", ".join(f"{k} {_num(v)}" for k, v in facts["metrics"].items()))
    for gate in facts["gates"]:
        verdict = "[green]passed[/]" if gate["passed"] else "[red]failed[/]"
        out.print(f"gate {escape(gate['gate'])} ({escape(gate['slice'])}): margin "
                  f"{_num(gate['margin'])} {verdict}")
    out.print("score thresholds: " + ", ".join(f"{escape(k)} {_num(v)}" for k, v in
                                               facts["score_thresholds"].items()))
    if facts["edge"]:
        out.print("edge variants, mAP change: " + ", ".join(
            f"{escape(k)} {_num(v)}" for k, v in facts["edge"].items()))
    out.print(f"code version: {escape(facts['code_version'])}")
    out.print(f"model card: {escape(card['html'])}\n      json: {escape(card['json'])}")


def _print_compare(out, report: dict[str, Any]) -> None:
    requests = report["requests"]
    out.rule(f"{escape(report['model'])}: {report['candidate']} (candidate) vs "
             f"{report['baseline']} (baseline) · {report['mode']} mode")
    out.print(f"requests: baseline {requests['baseline']}, candidate {requests['candidate']} "
              f"({requests['candidate_shadow']} shadow), paired by request "
              f"{requests['paired']}; images paired {report['images_paired']} "
              f"(by request {report['pairs_by']['request']}, by image "
              f"{report['pairs_by']['image']})")
    agreement = report["agreement"]
    out.print("detections agree on " + (f"{agreement:.1%} of paired images"
                                          if agreement is not None else
                                          "- (no image answered by both)")
              + f" (class and IoU >= {report['iou']}, scores >= {report['min_score']})")
    table = Table("class", "matched", "score shift", "baseline mean", "candidate mean",
                  "only baseline", "only candidate")
    for name, row in report["classes"].items():
        shift = row["score_shift"]
        table.add_row(escape(name), str(row["matched"]),
                      "-" if shift is None else f"{shift:+.3f}" + ("" if row["gated"]
                                                                    else " (few)"),
                      _num(row["baseline_mean_score"]), _num(row["candidate_mean_score"]),
                      str(row["unmatched_baseline"]), str(row["unmatched_candidate"]))
    out.print(table)
    for version, stats in report["latency_ms"].items():
        out.print(f"latency of {version}: p50 {_num(stats['p50'])} ms, p95 "
                  f"{_num(stats['p95'])} ms over {stats['count']} requests")
    for problem in report["problems"]:
        out.print(f"[red]short of the release settings:[/] {escape(problem)}")
    if not report["problems"]:
        out.print("[green]within the release settings[/]")
    if "recorded_as" in report:
        out.print(f"recorded as ML Metadata execution {report['recorded_as']}")
    for bad in report["logs"]["unreadable"]:
        out.print(f"[yellow]partly read:[/] {escape(bad)}")


def _num(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}"
