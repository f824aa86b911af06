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
    console,
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


# ------------------------------------------------------------------------ index, similar


def _index_dir(context: _Context, index_dir: str | None) -> str:
    return index_dir or os.path.join(context.home, "feedback", "index")


index_option = click.option("--index", "index_dir", default=None,
                            help="Crop index folder (default <home>/feedback/index).")


@click.command("index")
@click.option("--model", "model_spec", required=True,
              help="Version (a number) or exported SavedModel folder whose features embed.")
@click.option("--examples", "examples", multiple=True,
              help="GZIP TFRecord globs of training tf.Examples (default: the train split "
                   "of the version's Examples in ML Metadata).")
@click.option("--logs", "logs", multiple=True,
              help="Request logs whose served detections join the index (optional).")
@index_option
@model_options
def index_cmd(model_spec, examples, logs, index_dir, context) -> None:
    """Build the crop-embedding index (training ground truth + logged detections, and the
    training images' vectors) that `similar` and `select` search."""
    from components.coco_eval.offline import read_examples
    from pipelines.feedback import embeddings
    from pipelines.feedback import index as crop_index
    from serving import log_reader

    model = context.model(model_spec)
    if not examples:
        if not model_spec.isdigit():
            raise click.UsageError("--examples is needed with a model folder (no lineage)")
        examples = crop_index.training_split(context.registry.mlmd.store, model_spec)
    files = log_reader.log_files(logs) if logs else []
    read = log_reader.LogRead(files)
    settings = context.config.feedback
    out = _index_dir(context, index_dir)
    with context.quiet("index") as terminal:
        embedder = embeddings.Embedder(model.path)
        with _progress(terminal, "img") as bar:
            try:
                sources = {crop_index.TRAIN: crop_index.example_crops(read_examples(examples))}
            except FileNotFoundError as e:
                raise click.ClickException(str(e)) from e
            if files:
                sources[crop_index.LOGS] = crop_index.log_crops(
                    log_reader.read_requests(read), model, settings.default_threshold)
            built = crop_index.build(embedder, model, sources,
                                     {"examples": list(examples), "logs": files}, bar.update)
        path = built.save(out)
    console.print(f"wrote {path}: {built.size(crop_index.TRAIN)} training crops, "
                  f"{built.size(crop_index.LOGS)} logged crops ({built.dim} dims)")


def _parse_box(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        box = [float(v) for v in text.split(",")]
    except ValueError:
        box = []
    if len(box) != 4 or not (0 <= box[0] < box[2] <= 1 and 0 <= box[1] < box[3] <= 1):
        raise click.BadParameter(f"{text!r}: give ymin,xmin,ymax,xmax normalized to [0, 1] "
                                 "with min < max", param_hint="--box")
    return box


@click.command("similar")
@click.argument("image", type=click.Path(exists=True, dir_okay=False))
@click.option("--box", default=None,
              help="ymin,xmin,ymax,xmax (normalized); default: each of the model's "
                   "detections at or above its class threshold, else the whole image.")
@click.option("-k", "k", default=10, show_default=True, help="Neighbours per source.")
@index_option
@json_option
@model_options
def similar_cmd(image, box, k, index_dir, as_json, context) -> None:
    """The nearest training and logged crops of IMAGE's box(es), with their labels."""
    import numpy as np

    from pipelines.feedback import embeddings, models
    from pipelines.feedback import index as crop_index

    box = _parse_box(box)
    try:
        index = crop_index.CropIndex.load(_index_dir(context, index_dir))
    except (FileNotFoundError, ValueError) as e:
        raise click.ClickException(str(e)) from e
    model = models.open_dir(index.manifest["model"]["path"], index.manifest["model"]["name"])
    with open(image, "rb") as f:
        encoded = f.read()
    with context.quiet("similar"):
        embedder = embeddings.Embedder(model.path, index.manifest["variant"])
        try:
            (found,) = embedder.embed([encoded], [embeddings.WHOLE_IMAGE]).detections
        except Exception as e:  # a TF decode error: name the file, not the graph
            from serving.backends import clean_tf_message

            raise click.ClickException(f"{image}: {clean_tf_message(str(e))}") from None
        queries = []
        if box is not None:
            queries.append({"box": box, "class": None, "score": None})
        else:
            kept = [(b, s, c) for b, s, c in zip(found.boxes, found.scores, found.classes,
                                                 strict=True)
                    if s >= model.threshold(int(c), context.config.feedback.default_threshold)]
            queries += [{"box": [round(float(v), 4) for v in b], "class": model.label_name(int(c)),
                         "score": round(float(s), 4)} for b, s, c in kept]
            if not queries:
                queries.append({"box": embeddings.WHOLE_IMAGE[0].tolist(), "class": None,
                                "score": None})
        (vectors,) = embedder.embed([encoded], [np.array([q["box"] for q in queries])]).crops
    for query, vector in zip(queries, vectors, strict=True):
        for source in crop_index.SOURCES:
            query[source] = [{"similarity": round(s, 4), **crop}
                             for s, crop in index.search(source, vector[None], k)[0]]
    emit({"image": image, "index": index.manifest, "queries": queries}, as_json,
         _print_similar)


def _print_similar(out: Console, result: dict[str, Any]) -> None:
    for query in result["queries"]:
        what = (f"{escape(query['class'])} {query['score']:.2f}" if query["class"]
                else "query")
        out.print(f"[bold]{what}[/] box {query['box']}")
        for source in ("train", "logs"):
            table = Table("sim", "class", "image", "box", "score", title=f"nearest {source} crops")
            for hit in query[source]:
                table.add_row(f"{hit['similarity']:.3f}", escape(hit["class"]),
                              escape(str(hit["image"])[:24]), str(hit["box"]),
                              "–" if hit["score"] is None else f"{hit['score']:.2f}")
            out.print(table)


# ----------------------------------------------------------------------------- select


@click.command("select")
@logs_option
@click.option("--budget", required=True, type=click.IntRange(min=1),
              help="How many images to pick.")
@click.option("--out", "out_dir", required=True,
              help="Folder for annotations.json, images/ and selection.{json,csv}.")
@click.option("--model", "model_spec", default=None,
              help="Model for thresholds and embeddings (default: the crop index's).")
@index_option
@json_option
@model_options
def select_cmd(logs, budget, out_dir, model_spec, index_dir, as_json, context) -> None:
    """Rank logged images for labelling (uncertainty, version disagreement, novelty vs the
    training images, drifted-slice and per-class quotas) and write the picks as a
    pre-annotated COCO set."""
    import csv
    import json

    from pipelines.feedback import embeddings, models, select
    from pipelines.feedback import index as crop_index
    from serving import log_reader

    settings = context.config.feedback
    try:
        index = crop_index.CropIndex.load(_index_dir(context, index_dir))
    except (FileNotFoundError, ValueError) as e:
        raise click.ClickException(str(e)) from e
    model = (context.model(model_spec) if model_spec else
             models.open_dir(index.manifest["model"]["path"], index.manifest["model"]["name"]))
    files = context.log_files(logs)
    read = log_reader.LogRead(files)
    with context.quiet("select") as terminal:
        pool, skipped = select.candidates(log_reader.read_requests(read), model, settings)
        embedder = embeddings.Embedder(model.path, index.manifest["variant"])
        with _progress(terminal, "img", len(pool)) as bar:
            select.embed(pool, embedder, index, model, settings, bar.update)
        chosen = select.select(pool, budget, settings,
                               [r["meta"] for r in index.crops[crop_index.TRAIN_IMAGES]])
        path, rows = select.write_coco(chosen, out_dir, model, settings)
    with open(os.path.join(out_dir, "selection.json"), "w") as f:
        json.dump({"model": model.name, "logs": files, "candidates": len(pool),
                   "skipped": skipped, "picked": rows}, f, indent=1)
    with open(os.path.join(out_dir, "selection.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["rank", "file_name", "classes", "score", "uncertainty",
                         "disagreement", "novelty", "reasons"])
        for r in rows:
            writer.writerow([r["rank"], r["file_name"], " ".join(r["classes"]), r["score"],
                             r["uncertainty"], r["disagreement"], r["novelty"],
                             "; ".join(r["reasons"])])
    summary = {"annotations": path, "picked": len(rows), "candidates": len(pool),
               "skipped": skipped, "unreadable": read.unreadable}
    emit(summary, as_json, lambda out, s: out.print(
        f"picked {s['picked']} of {s['candidates']} logged images -> {escape(s['annotations'])}"
        f" ({s['skipped']['redacted_images']} redacted images could not be considered)"))
