"""``sightline data`` (synthetic datasets, the data report) and ``sightline schema``."""

from __future__ import annotations

import os
import sys

import click
from rich.markup import escape

from pipelines.cli.common import (
    console,
    home_option,
    metadata_option,
    open_metadata,
    reports_dir,
)


@click.group("data")
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
                              first_image_id=first_id, progress=sys.stderr)
        console.print(f"wrote {path}")


@data_group.command("report")
@click.argument("span", default="latest")
@click.option("--run", "run_id", default=None,
              help="Only this pipeline run's DriftCheck (a run id, or 'latest').")
@click.option("--out", "out_dir", default=None,
              help="Folder for report.html and report.json "
                   "(default <home>/reports/data-span-<span>-<run id>).")
@home_option
@metadata_option
def data_report(span, run_id, out_dir, home, metadata) -> None:
    """One span's data as DriftCheck saw it: drift per feature, box quality, histograms,
    sample images with their boxes, TFDV's Facets overview.

    SPAN is a span number or 'latest' (the highest span DriftCheck checked); the newest
    DriftCheck of that span is reported, of run --run if given."""
    from pipelines.reports import data, runs

    try:
        span = data.parse_span(span)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="SPAN") from e
    try:
        report_data = data.build(open_metadata(home, metadata), span, run_id)
        out_dir = out_dir or reports_dir(home, data.default_dir_name(report_data))
        html_path, json_path = data.write(report_data, out_dir)
    except (runs.NoRunsError, data.NoDriftCheckError) as e:
        raise click.ClickException(str(e)) from e
    console.print(f"data report: {html_path}\n        json: {json_path}")
    console.print(f"span {report_data['span']} of run {report_data['run_id']}: "
                  f"{escape(report_data['verdict']['text'])}")


@click.group("schema")
def schema_group() -> None:
    """The curated TFDV schema."""


@schema_group.command("infer")
@click.argument("data_dir")
@click.option("--pattern", default="annotations.json", show_default=True)
@click.option("--images", "images_root", default=None, metavar="DIR",
              help="The folder image file_name entries are relative to, relative to DATA_DIR; "
              "default: the annotations file's folder.")
@click.option("--out", default="schema.draft.pbtxt", show_default=True)
def schema_infer(data_dir, pattern, images_root, out) -> None:
    """Draft a schema from a COCO dataset, for review before it replaces schemas/schema.pbtxt."""
    import tensorflow_data_validation as tfdv

    from schemas import curate

    schema, quarantined = curate.draft_from_dataset(
        os.path.join(data_dir, pattern),
        images_root=os.path.join(data_dir, images_root) if images_root else None)
    tfdv.write_schema_text(schema, out)
    console.print(f"wrote {out} ({quarantined} records quarantined and not used); review the "
                  f"diff against {curate.DEFAULT_SCHEMA_PATH} before adopting it")
