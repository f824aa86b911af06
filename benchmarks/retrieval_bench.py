"""Crop retrieval: do a query crop's nearest crops share its class? Index build and query time.

    .venv/bin/python -m benchmarks.retrieval_bench HOME_OR_MODEL_DIR [--queries 500] [-k 10]
    .venv/bin/python -m benchmarks.retrieval_bench MODEL_DIR --train GLOB --eval GLOB \
        [--variants roi center ...]

With a Sightline home: its latest pushed version, and the train / eval splits of the
Examples in that version's lineage. The index holds the training split's ground-truth
crops (``sightline index``'s training source); queries are ground-truth crops of the eval
split (images the index never saw). Reported: the share of the k nearest crops sharing the
query's class, against chance (the sum of squared class shares of the index), index build
time (embedding included) and per-query search time (p50 / p99, embedding excluded), with
the CPU, for each crop-embedding variant (``pipelines.feedback.embeddings.VARIANTS``;
default: the one the index uses). JSON in ``benchmarks/results/retrieval_bench.json``.
Read-only on the home.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pathlib
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
from rich.console import Console
from rich.table import Table

from benchmarks import machine

RESULTS = pathlib.Path(__file__).resolve().parent / "results" / "retrieval_bench.json"


def _from_home(home: str) -> tuple[str, str, list[str], list[str]]:
    """(model dir, version, train patterns, eval patterns) of the home's latest push."""
    from pipelines import metadata_store
    from pipelines.feedback.index import training_split
    from pipelines.reports import runs

    store = runs.connect(metadata_store.connection_config(None, home))
    pushed = [a for a in store.get_artifacts_by_type("PushedModel")
              if runs.custom_properties(a).get("pushed")]
    if not pushed:
        raise SystemExit(f"{home}: no pushed model yet")
    latest = max(pushed, key=lambda a: int(runs.custom_properties(a)["pushed_version"]))
    props = runs.custom_properties(latest)
    version = str(props["pushed_version"])
    return (props["pushed_destination"], version, training_split(store, version),
            training_split(store, version, "eval"))


def _measure(model, variant: str, train: list[str], queries_from: list[str], queries: int,
             k: int) -> dict:
    """One embedding variant: build the training index, query it with eval crops."""
    from components.coco_eval.offline import read_examples
    from pipelines.feedback import embeddings
    from pipelines.feedback import index as crop_index

    start = time.perf_counter()
    embedder = embeddings.Embedder(model.path, variant)
    load_s = time.perf_counter() - start
    start = time.perf_counter()
    index = crop_index.build(embedder, model,
                             {crop_index.TRAIN: crop_index.example_crops(read_examples(train))},
                             {"examples": train})
    build_s = time.perf_counter() - start

    query_vectors, query_classes = [], []
    for encoded, boxes, crops, _ in crop_index.example_crops(read_examples(queries_from)):
        if len(query_classes) >= queries:
            break
        if crops:
            (vectors,) = embedder.embed([encoded], [boxes]).crops
            query_vectors += list(vectors)
            query_classes += [c["class"] for c in crops]
    query_vectors, query_classes = query_vectors[:queries], query_classes[:queries]

    times, same = [], []
    for vector, cls in zip(query_vectors, query_classes, strict=True):
        start = time.perf_counter()
        (hits,) = index.search(crop_index.TRAIN, vector[None], k)
        times.append((time.perf_counter() - start) * 1000.0)
        same.append(np.mean([crop["class"] == cls for _, crop in hits]))
    counts = collections.Counter(c["class"] for c in index.crops[crop_index.TRAIN])
    total = sum(counts.values())
    per_class = collections.defaultdict(list)
    for cls, s in zip(query_classes, same, strict=True):
        per_class[cls].append(s)
    return {
        "variant": variant, "parts": [list(p) for p in embeddings.VARIANTS[variant]],
        "index_crops": total, "queries": len(same), "dim": index.dim,
        "same_class_rate": round(float(np.mean(same)), 4),
        "chance_rate": round(sum((n / total) ** 2 for n in counts.values()), 4),
        "per_class_rate": {c: round(float(np.mean(v)), 4) for c, v in sorted(per_class.items())},
        "class_shares": {c: round(n / total, 4) for c, n in sorted(counts.items())},
        "model_load_s": round(load_s, 2), "index_build_s": round(build_s, 2),
        "query_ms": {"p50": round(float(np.percentile(times, 50)), 4),
                     "p99": round(float(np.percentile(times, 99)), 4)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", help="A Sightline home or an exported SavedModel folder.")
    parser.add_argument("--train", nargs="*", help="Training Examples globs (model folder).")
    parser.add_argument("--eval", nargs="*", help="Query Examples globs (model folder).")
    parser.add_argument("--variants", nargs="*", default=None,
                        help="Crop-embedding variants to compare (default: the index's).")
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()

    from pipelines.feedback import embeddings, models

    variants = args.variants or [embeddings.DEFAULT_VARIANT]
    unknown = sorted(set(variants) - set(embeddings.VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; use {sorted(embeddings.VARIANTS)}")
    if os.path.isfile(os.path.join(args.target, "saved_model.pb")):
        if not (args.train and args.eval):
            parser.error("a model folder needs --train and --eval")
        model_dir, version, train, queries_from = args.target, None, args.train, args.eval
    else:
        model_dir, version, train, queries_from = _from_home(args.target)
    model = models.open_dir(model_dir, version)
    measured = [_measure(model, v, train, queries_from, args.queries, args.k) for v in variants]
    result = {"machine": machine.describe(), "model": {"path": model.path, "version": version},
              "train": train, "eval": queries_from, "k": args.k,
              "default_variant": embeddings.DEFAULT_VARIANT, "variants": measured}
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))

    table = Table(title=f"crop retrieval, k={args.k} ({machine.summary(result['machine'])})")
    table.add_column("measure")
    for m in measured:
        table.add_column(m["variant"])
    table.add_row("index crops (train GT) / queries (eval GT)",
                  *(f"{m['index_crops']} / {m['queries']}" for m in measured))
    table.add_row(f"same class among {args.k} nearest",
                  *(f"{m['same_class_rate']:.3f}" for m in measured))
    table.add_row("chance (sum of squared class shares)",
                  *(f"{m['chance_rate']:.3f}" for m in measured))
    for cls, share in measured[0]["class_shares"].items():
        table.add_row(f"  {cls} (share {share:.3f})",
                      *(f"{m['per_class_rate'].get(cls, float('nan')):.3f}" for m in measured))
    table.add_row("index build s (embedding included)",
                  *(f"{m['index_build_s']:.1f}" for m in measured))
    table.add_row("query ms p50 / p99 (search only)",
                  *(f"{m['query_ms']['p50']:.3f} / {m['query_ms']['p99']:.3f}"
                    for m in measured))
    Console().print(table)
    Console().print(f"wrote {out}")


if __name__ == "__main__":
    main()
