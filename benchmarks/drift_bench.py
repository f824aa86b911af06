"""DriftCheck's measures on the generator's scenarios: does it fire where it should, only there?

    .venv/bin/python -m benchmarks.drift_bench                 # 400-image spans (tests' size)
    .venv/bin/python -m benchmarks.drift_bench --images 2400   # a default train split's size

A baseline span of the default world (seed 0) is compared, exactly as the pipeline's
DriftCheck does (the curated schema's L∞ / JS comparators through TFDV, PSI on the
baseline's deciles, per-class box fit), with: the default world at three other seeds (no
drift expected), and the ``night_heavy``, ``new_camera`` and ``loose_boxes`` scenarios.
Prints one row per span and feature and writes ``benchmarks/results/drift_bench.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow_data_validation as tfdv
from rich.console import Console
from rich.table import Table

from components.drift_check import annotations, drift
from data import synth
from pipelines import configs
from schemas import DEFAULT_SCHEMA_PATH, curate

RESULTS = pathlib.Path(__file__).resolve().parent / "results" / "drift_bench.json"
SPANS = {"default seed 1": ("default", 1), "default seed 2": ("default", 2),
         "default seed 3": ("default", 3), "night_heavy": ("night_heavy", 0),
         "new_camera": ("new_camera", 0), "loose_boxes": ("loose_boxes", 0)}


def _span(root: pathlib.Path, scenario: str, seed: int, images: int, schema) -> tuple:
    path = str(synth.generate(root / f"{scenario}-{seed}", images, seed=seed, scenario=scenario))
    split = str(root / f"{scenario}-{seed}" / "split")
    stats, _ = curate.statistics_of_dataset(path, schema, split)
    return stats, list(annotations.read_split(split))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=400, help="images per span")
    args = parser.parse_args()
    defaults = configs.RunConfig().drift
    schema = tfdv.load_schema_text(DEFAULT_SCHEMA_PATH)
    names = curate.class_names()
    console = Console()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base_stats, base_images = _span(pathlib.Path(tmp), "default", 0, args.images, schema)
        base_boxes = annotations.class_box_stats(base_images, names)
        for label, (scenario, seed) in SPANS.items():
            console.print(f"span {label} ...")
            stats, images = _span(pathlib.Path(tmp), scenario, seed, args.images, schema)
            features = drift.compare(
                stats, base_stats, schema, defaults.psi_threshold,
                annotations.feature_values(images), annotations.feature_values(base_images))
            fit = annotations.box_fit_changes(annotations.class_box_stats(images, names),
                                              base_boxes, defaults.box_fit_tolerance)
            rows += [{"span": label, **f.to_dict()} for f in features]
            rows.append({"span": label, "feature": "box fit (per class)",
                         "measurements": {}, "thresholds": {}, "drifted": sorted(fit),
                         "fit_ratios": fit})
    table = Table("span", "feature", "L_inf", "JS", "PSI", "drifted", title=(
        f"drift vs the default world (seed 0), {args.images}-image spans"))
    for row in rows:
        m = row["measurements"]
        cells = [f"{m[k]:.3f}" if k in m else "" for k in ("L_inf", "JS", "PSI")]
        drifted = ", ".join(row["drifted"]) + (f" {row['fit_ratios']}" if row.get(
            "fit_ratios") else "")
        table.add_row(row["span"], row["feature"], *cells, drifted or "-")
    console.print(table)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"images_per_span": args.images, "rows": rows}, indent=2))
    console.print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
