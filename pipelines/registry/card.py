"""The model card of a pushed version: ``model_card.json`` and ``model_card.html``.

The JSON has two members:

- ``model_card``: a Model Card in model-card-toolkit's schema v0.0.2 (``schema/``; the
  toolkit itself cannot be installed with Sightline's pins, see ``schema/NOTICE``):
  only the schema's fields, so ``model_card_toolkit.ModelCard().from_json(...)`` and its
  templates read it. Every section below is in it in the schema's terms (metrics,
  thresholds, gate margins, calibration and edge deltas as ``performance_metrics``,
  datasets with their hashes and counts, the stage history in ``version.diff``).
- ``sightline``: the same facts as structured data for tools and tests: ``model``,
  ``intended_use``, ``data``, ``metrics``, ``gates``, ``calibration``,
  ``score_thresholds``, ``edge``, ``hyperparameters``, ``code_version``, ``lineage``,
  ``release`` (stage, history, approvals, comparisons).

Nothing is computed here that a record does not hold: the run summary and lineage come
from ML Metadata (``pipelines.reports.runs``), metrics and plots from the Evaluator's
output (``pipelines.reports.evaluation``), gates from the Evaluator's own
``eval_config.json``, thresholds and the code version from the version's
``release.json``, and the release history from the registry.
"""

from __future__ import annotations

import datetime
import html
import json
import os
from typing import Any

from pipelines.registry import rules
from pipelines.registry.registry import RELEASE_FILE, Registry, read_json

SCHEMA_VERSION = "0.0.2"
SCHEMA_PATH = os.path.join(os.path.dirname(__file__), "schema", "model_card.schema.json")
SECTIONS = ("model", "intended_use", "data", "metrics", "gates", "calibration",
            "score_thresholds", "edge", "hyperparameters", "code_version", "lineage",
            "release")
_SLICE_KEYS = ("mAP", "mAP50", "AR100", "D-ECE")


def build(registry: Registry, version: str) -> dict[str, Any]:
    """The card of ``version`` as ``{"model_card": <MCT>, "sightline": {...}}``."""
    from components.coco_eval import results as eval_results
    from pipelines.reports import evaluation, runs

    version = str(version)
    snap = registry.snapshot()
    pushed = registry.require(snap, version, f"build the model card of version {version}")
    store = registry.mlmd.store
    run_id = registry.mlmd.run_id(pushed)
    summary = runs.summarize(store, run_id)
    report = evaluation.build(summary)
    loaded = eval_results.load_metrics(summary["evaluation"]["uri"])
    row = registry.version(version)
    release = read_json(os.path.join(row["path"], RELEASE_FILE))
    class_names = registry.class_names(version)
    sightline = {
        "model": {"name": registry.model, "version": version, "stage": row["stage"],
                  "pushed_at": row["pushed_at"], "path": row["path"], "run_id": run_id,
                  "blessed": row["blessed"], "class_names": class_names},
        "intended_use": intended_use(class_names, report),
        "data": _data(summary),
        "metrics": {"overall": report["overall"], "slices": report["slices"],
                    "classes": report["classes"], "sizes": report["sizes"],
                    "has_baseline": report["has_baseline"]},
        "gates": gate_margins(summary["evaluation"]["uri"], loaded),
        "calibration": {
            "D-ECE": next(r["value"] for r in report["overall"] if r["metric"] == "D-ECE"),
            "per_class": {r["class"]: r.get("D-ECE") for r in report["classes"]},
            "reliability": report["reliability"]},
        "score_thresholds": release.get("score_thresholds", {}),
        "edge": _edge(summary),
        "hyperparameters": summary.get("model", {}).get("hparams", {}),
        "code_version": release.get("code_version") or pushed.custom_properties[
            "code_version"].string_value or "not recorded (pushed before code versions were)",
        "lineage": runs.lineage(store, version),
        "release": _release(registry, snap, version),
    }
    return {"model_card": to_model_card_toolkit(sightline, evaluation.plots(report)),
            "sightline": sightline}


def summary(card: dict[str, Any]) -> dict[str, Any]:
    """The card's key facts, for ``sightline models show`` (the files hold the rest)."""
    s = card["sightline"]
    data = s["data"]
    return {
        "for": s["intended_use"]["for"][0],
        "not_for": s["intended_use"]["not_for"],
        "data": {"span": data.get("span"), "listed_images": data.get("listed_images"),
                 "quarantined_images": data.get("quarantined_images"),
                 "splits": {k: v.get("num_examples")
                            for k, v in sorted((data.get("splits") or {}).items())}},
        "metrics": {r["metric"]: r["value"] for r in s["metrics"]["overall"]
                    if r["metric"] in ("mAP", "mAP50", "D-ECE")},
        "gates": [{k: g[k] for k in ("gate", "slice", "margin", "passed")} for g in s["gates"]],
        "score_thresholds": s["score_thresholds"],
        "edge": {name: v.get("mAP_change") for name, v in s["edge"]["variants"].items()},
        "code_version": s["code_version"],
    }


# ----------------------------------------------------------------------------- sections


def intended_use(class_names: list[str], report: dict[str, Any]) -> dict[str, list[str]]:
    """What the model is for and not for, from its classes and evaluated slices."""
    seen = {}
    for row in report["slices"]:
        feature, _, value = row["slice"].partition("=")
        seen.setdefault(feature.removeprefix("meta/"), []).append(value)
    conditions = "; ".join(f"{k}: {', '.join(v)}" for k, v in sorted(seen.items()))
    few = [r["slice"] for r in report["slices"] if "too_few" in r]
    few += [f"class {r['class']}" for r in report["classes"] if "too_few" in r]
    not_for = [
        f"Objects of other classes: the model only knows {', '.join(class_names)} and "
        "labels anything it detects as one of them.",
        "Images unlike the evaluated conditions (other cameras, lighting or image sizes) "
        "before they have been evaluated: the slices below are the evidence there is.",
        "Decisions about people, or safety-critical decisions without human review.",
        "Use with raw scores as probabilities beyond the calibration reported here; use the "
        "per-class score thresholds.",
    ]
    if few:
        not_for.append("Conditions with too little evaluation data to judge: "
                       + ", ".join(few) + ".")
    return {
        "for": [f"Detecting {', '.join(class_names)} (boxes, classes, scores) in JPEG/PNG "
                "images from the cameras and conditions it was evaluated on"
                + (f" ({conditions})" if conditions else "") + ".",
                "Serving through TF Serving's API (`sightline serve` or tensorflow_model_server)"
                " and, as a TFLite edge bundle, on devices."],
        "not_for": not_for,
        "users": ["Applications consuming detections through the serving API.",
                  "Release engineers deciding on promotion; ML engineers comparing versions."],
    }


def _data(summary: dict[str, Any]) -> dict[str, Any]:
    examples = summary.get("examples") or {}
    return {k: examples.get(k) for k in ("artifact_id", "uri", "span", "splits", "quarantined",
                                         "quarantine_reasons", "quarantine_report",
                                         "listed_images", "quarantined_images")}


def gate_margins(evaluation_uri: str, loaded: dict[str, Any]) -> list[dict[str, Any]]:
    """Each gate the Evaluator applied, with the value it judged and the margin left.

    Read from the Evaluator's ``eval_config.json`` (TFX drops the change gates when there
    is no blessed baseline, so the first model lists its floor alone). Margin: value -
    floor, or change - allowed change (negative: the gate failed).
    """
    from components.coco_eval import results as eval_results

    with open(os.path.join(evaluation_uri, "eval_config.json")) as f:
        config = json.load(f)["evalConfig"]
    candidate = loaded[eval_results.CANDIDATE]
    change = loaded[eval_results.CHANGE]
    gates = []
    for spec in config.get("metricsSpecs", []):
        thresholds = []
        for metric in spec.get("metrics", []):
            name = json.loads(metric.get("config") or "{}").get("name") or metric["className"]
            thresholds += [(name, t) for t in metric.get("perSliceThresholds", [])]
        for name, per_slice in spec.get("perSliceThresholds", {}).items():
            thresholds += [(name, t) for t in per_slice.get("thresholds", [])]
        for name, threshold in thresholds:
            for slice_name in _slices(threshold.get("slicingSpecs", [{}]), candidate):
                gates += _gate_rows(name, slice_name, threshold.get("threshold", {}),
                                    candidate.get(slice_name, {}),
                                    change.get(slice_name, {}))
    return gates


def _slices(specs: list[dict[str, Any]], candidate: dict[str, Any]) -> list[str]:
    names = []
    for spec in specs:
        keys = spec.get("featureKeys")
        if not keys:
            names.append("overall")
        else:
            names += sorted(s for s in candidate if s.split("=")[0] in keys and "," not in s)
    return names


def _gate_rows(metric: str, slice_name: str, threshold: dict[str, Any],
               values: dict[str, Any], changes: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    value = values.get(metric)
    floor = threshold.get("valueThreshold", {}).get("lowerBound")
    if floor is not None:
        margin = None if value is None else round(float(value) - floor, 4)
        rows.append({"gate": f"{metric} >= {floor:g}", "slice": slice_name, "metric": metric,
                     "value": _round(value), "threshold": floor, "margin": margin,
                     "passed": margin is not None and margin >= 0})
    allowed = threshold.get("changeThreshold", {}).get("absolute")
    if allowed is not None:
        moved = changes.get(metric)
        margin = None if moved is None else round(float(moved) - allowed, 4)
        rows.append({"gate": f"{metric} change vs blessed baseline >= {allowed:+g}",
                     "slice": slice_name, "metric": metric, "value": _round(moved),
                     "threshold": allowed, "margin": margin,
                     "passed": margin is not None and margin >= 0})
    return rows


def _edge(summary: dict[str, Any]) -> dict[str, Any]:
    variants = summary.get("edge_variants")
    if not variants:
        return {"enabled": False, "variants": {},
                "note": "no edge variants were built in this run (edge.enabled=false or a "
                        "custom run_fn)"}
    return {"enabled": True,
            "variants": {name: {k: v for k, v in row.items() if k != "uri"}
                         for name, row in sorted(variants.items())},
            "shipped": summary.get("edge_push")}


def _release(registry: Registry, snap: Any, version: str) -> dict[str, Any]:
    history = [r.to_json() for r in registry.history(snap, version)]
    return {
        "stage": snap.stages[version],
        "history": [r for r in history if r["kind"] == "transition"],
        "approvals": [r for r in history if r["kind"] == "approval"],
        "comparisons": [r for r in history if r["kind"] == "comparison"],
    }


# ------------------------------------------------------------- model-card-toolkit schema

_PLOTS = (("class_ap", "AP per class"), ("slices", "mAP per slice"),
          ("reliability", "Reliability (calibration)"))


def _uri(path: str) -> str:
    return path if "://" in path else "file://" + os.path.abspath(path)


def _date(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).date().isoformat()


def _metric(kind: str, value: Any, slice_name: str) -> dict[str, str]:
    text = f"{value:.4f}" if isinstance(value, float) else str(value)
    return {"type": kind, "value": text, "slice": slice_name}


def to_model_card_toolkit(s: dict[str, Any], plots: dict[str, str]) -> dict[str, Any]:
    """The card in model-card-toolkit's schema v0.0.2 (its fields only)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "model_details": _mct_details(s),
        "model_parameters": _mct_parameters(s),
        "quantitative_analysis": {
            "performance_metrics": _mct_metrics(s),
            "graphics": {"description": "From the Evaluator's output (IoU 0.5 for PR and "
                                        "calibration)",
                         "collection": [{"name": title, "image": plots[key]}
                                        for key, title in _PLOTS if key in plots]},
        },
        "considerations": _mct_considerations(s),
    }


def _mct_details(s: dict[str, Any]) -> dict[str, Any]:
    model, hparams = s["model"], s["hyperparameters"]
    history = "; ".join(f"{rules.when(r['time'])}: {r['from_stage']} -> {r['to_stage']} by "
                        f"{r['actor']} ({r['reason']})" for r in s["release"]["history"])
    approvals = "; ".join(f"{rules.when(r['time'])} by {r['actor']} ({r['reason']})"
                          for r in s["release"]["approvals"])
    return {
        "name": model["name"],
        "overview": (f"Object detector {model['name']} version {model['version']}, "
                     f"stage {model['stage']}, pushed by run {model['run_id']}."),
        "documentation": (f"Code version: {s['code_version']}. Hyperparameters: "
                          + ", ".join(f"{k}={v}" for k, v in sorted(hparams.items()))
                          + f". Approvals: {approvals or 'none'}."),
        "version": {"name": model["version"], "date": _date(model["pushed_at"]),
                    "diff": f"Stage history: {history or 'candidate since the push'}."},
        "references": [{"reference": _uri(model["path"])}]
        + [{"reference": _uri(e["uri"])} for e in s["lineage"]["examples"]],
        "path": model["path"],
    }


def _mct_parameters(s: dict[str, Any]) -> dict[str, Any]:
    hparams = s["hyperparameters"]
    return {
        "model_architecture": ("Single-stage anchor-free detector (CenterNet-style heads) "
                               + ", ".join(f"{k}={hparams[k]}" for k in
                                           ("model_size", "input_size") if k in hparams)),
        "data": _mct_datasets(s["data"]),
        "input_format": "serving_default: encoded JPEG/PNG bytes (images); "
                        "serving_examples: serialized tf.Example (examples)",
        "output_format": "detection_boxes [K, 4] normalized ymin, xmin, ymax, xmax; "
                         "detection_scores [K]; detection_classes [K] (1-based); "
                         "num_detections",
        "output_format_map": [{"key": f"detection_classes {i + 1}", "value": name}
                              for i, name in enumerate(s["model"]["class_names"])],
    }


def _mct_datasets(data: dict[str, Any]) -> list[dict[str, str]]:
    """One MCT dataset per split: counts, content hash, the ingestion's quarantine."""
    quarantine = (f"{data.get('quarantined_images')} of {data.get('listed_images')} listed "
                  f"images and {data.get('quarantined')} records in all quarantined at "
                  f"ingestion ({json.dumps(data.get('quarantine_reasons'))})")
    return [{
        "name": f"{split} split (span {data.get('span')})",
        "link": _uri(data["uri"]) if data.get("uri") else "",
        "description": (f"{info.get('num_examples')} examples, content SHA-256 "
                        f"{info.get('content_hash')}; {quarantine}; Examples artifact "
                        f"{data.get('artifact_id')} in ML Metadata"),
    } for split, info in sorted((data.get("splits") or {}).items())]


def _mct_metrics(s: dict[str, Any]) -> list[dict[str, str]]:
    """Every number of the card as MCT performance metrics, sliced by what it is about."""
    metrics = [_metric(r["metric"], r["value"], "overall") for r in s["metrics"]["overall"]
               if r["value"] is not None]
    for row in s["metrics"]["slices"]:
        metrics += [_metric(k, row[k], row["slice"]) for k in _SLICE_KEYS
                    if row.get(k) is not None]
    for row in s["metrics"]["classes"]:
        metrics += [_metric(k, row[k], f"class: {row['class']}")
                    for k in ("AP", "AP50", "F1", "D-ECE") if row.get(k) is not None]
    metrics += [_metric("score threshold (max F1)", v, f"class: {k}")
                for k, v in sorted(s["score_thresholds"].items())]
    metrics += [_metric(f"gate margin: {g['gate']}", g["margin"], g["slice"])
                for g in s["gates"] if g["margin"] is not None]
    for name, variant in s["edge"]["variants"].items():
        metrics += [_metric(f"edge {k}", variant[k], f"edge variant: {name}")
                    for k in ("mAP", "mAP_change", "size_bytes") if k in variant]
    return metrics


def _mct_considerations(s: dict[str, Any]) -> dict[str, Any]:
    edge = s["edge"]
    tradeoffs = [{"description": f"Edge variant {name}: {v.get('size_bytes', 0) / 1024:.0f} KB, "
                                 f"mAP {v.get('mAP', 0):.4f} ({v.get('mAP_change', 0):+.4f} "
                                 "versus the float model)"}
                 for name, v in edge["variants"].items()] or [
        {"description": edge.get("note", "")}]
    use = s["intended_use"]
    return {
        "users": [{"description": d} for d in use["users"]],
        "use_cases": [{"description": d} for d in use["for"]],
        "limitations": [{"description": d} for d in use["not_for"]],
        "tradeoffs": tradeoffs,
        "ethical_considerations": [{
            "name": "Detections acted on without review",
            "mitigation_strategy": "Per-class score thresholds; calibration reported; "
                                   "promotion needs an approval and canary evidence."}],
    }


# ----------------------------------------------------------------------------- HTML

_e = html.escape


def render_html(card: dict[str, Any]) -> str:
    """One self-contained page; every value from the records is escaped."""
    from pipelines.reports.html import STYLE

    s, mct = card["sightline"], card["model_card"]
    model = s["model"]
    plots = {g["name"]: g["image"] for g in mct["quantitative_analysis"]["graphics"]
             ["collection"]}
    return f"""<!doctype html><html><head><meta charset=utf-8>
<title>Model card · {_e(model['name'])} {_e(model['version'])}</title><style>{STYLE}
td,th{{text-align:left}}</style></head><body>
<h1>Model card: {_e(model['name'])} version {_e(model['version'])}</h1>
{_html_model(model)}
<h2>Intended use</h2><h3>For</h3>{_items(s['intended_use']['for'])}
<h3>Not for</h3>{_items(s['intended_use']['not_for'])}
{_html_data(s['data'])}
{_html_metrics(s, plots)}
{_html_calibration(s['calibration'], plots)}
<h2>Per-class score thresholds</h2>{_kv(s['score_thresholds'])}
{_html_edge(s['edge'])}
<h2>Hyperparameters</h2>{_kv(s['hyperparameters'])}
<h2>Code version</h2><p><code>{_e(s['code_version'])}</code></p>
{_html_lineage(s['lineage'])}
{_html_release(s['release'])}
<p>JSON: model-card-toolkit schema {_e(mct['schema_version'])} under <code>model_card</code>,
the same facts structured under <code>sightline</code>.</p></body></html>"""


def _items(values: list[str]) -> str:
    return "<ul>" + "".join(f"<li>{_e(v)}</li>" for v in values) + "</ul>"


def _kv(mapping: dict[str, Any]) -> str:
    from pipelines.reports.html import table

    return table([{"key": k, "value": v if isinstance(v, int | float | str) or v is None
                   else json.dumps(v)} for k, v in sorted(mapping.items())], ["key", "value"])


def _img(plots: dict[str, str], title: str) -> str:
    return (f"<img alt='{_e(title)}' src='data:image/png;base64,{_e(plots[title])}'>"
            if title in plots else "")


def _html_model(model: dict[str, Any]) -> str:
    blessed = "blessed" if model["blessed"] else "<span class=bad>not blessed</span>"
    return (f"<p>Stage <b>{_e(model['stage'])}</b> · {blessed} · pushed "
            f"{_e(rules.when(model['pushed_at']))} by run {_e(model['run_id'])} · "
            f"<code>{_e(model['path'])}</code></p>")


def _html_data(data: dict[str, Any]) -> str:
    from pipelines.reports.html import cell, table

    splits = [{"split": k, **v} for k, v in sorted((data.get("splits") or {}).items())]
    reasons = data.get("quarantine_reasons") or {}
    return f"""<h2>Training and evaluation data</h2>
<p>Examples artifact {cell(data.get('artifact_id'))}, span {cell(data.get('span'))}:
{cell(data.get('listed_images'))} images listed, {cell(data.get('quarantined_images'))}
quarantined; {cell(data.get('quarantined'))} quarantine records in all.</p>
{table(splits, ['split', 'num_examples', 'content_hash'])}
<h3>Quarantine reasons</h3>{_kv(reasons) if reasons else '<p>none</p>'}"""


def _html_metrics(s: dict[str, Any], plots: dict[str, str]) -> str:
    from pipelines.reports.html import table

    metrics = s["metrics"]
    return f"""<h2>Metrics</h2>{table(metrics['overall'], ['metric', 'value', 'baseline',
                                                        'change'])}
<h3>Slices</h3>{table(metrics['slices'], ['slice', 'images', *_SLICE_KEYS, 'baseline_mAP',
                                          'change_mAP'])}{_img(plots, 'mAP per slice')}
<h3>Per class</h3>{table(metrics['classes'], ['class', 'objects', 'AP', 'AP50',
                                              'score_threshold', 'F1', 'D-ECE'])}
{_img(plots, 'AP per class')}
<h2>Gates and margins</h2>{table(s['gates'], ['gate', 'slice', 'value', 'threshold',
                                               'margin', 'passed'])}"""


def _html_calibration(calibration: dict[str, Any], plots: dict[str, str]) -> str:
    from pipelines.reports.html import cell, table

    bins = calibration["reliability"]
    rows = [{"bin": i + 1, "detections": int(n), "mean score": score, "precision": precision}
            for i, (n, score, precision) in enumerate(zip(
                bins.get("count") or [], bins.get("score") or [], bins.get("precision") or [],
                strict=False)) if n]
    per_class = [{"class": k, "D-ECE": v} for k, v in sorted(calibration["per_class"].items())]
    return f"""<h2>Calibration</h2><p>D-ECE (IoU 0.5): {cell(calibration['D-ECE'])}</p>
{table(per_class, ['class', 'D-ECE'])}
<h3>Reliability</h3>{table(rows, ['bin', 'detections', 'mean score', 'precision'])}
{_img(plots, 'Reliability (calibration)')}"""


def _html_edge(edge: dict[str, Any]) -> str:
    from pipelines.reports.html import table

    if not edge["enabled"]:
        return f"<h2>Edge variants</h2><p>{_e(edge['note'])}</p>"
    rows = [{"variant": k, **v} for k, v in edge["variants"].items()]
    shipped = (f"<p>Shipped: {_e(json.dumps(edge['shipped']))}</p>"
               if edge.get("shipped") else "")
    return ("<h2>Edge variants</h2>"
            + table(rows, ["variant", "size_bytes", "mAP", "mAP50", "D-ECE", "mAP_change"])
            + shipped)


def _html_lineage(lineage: dict[str, Any]) -> str:
    from pipelines.reports.html import table

    return "<h2>Lineage</h2>" + table(lineage["edges"], [
        "to_type", "to_artifact", "execution", "input", "from_type", "from_artifact"])


def _evidence(evidence: Any) -> str:
    """A record's evidence in a line: what it was checked against, by ML Metadata id."""
    if not isinstance(evidence, dict):
        return str(evidence or "")
    parts = []
    for key, value in sorted(evidence.items()):
        if key == "settings":
            continue
        if isinstance(value, dict):
            value = value.get("artifact_id", value.get("id", json.dumps(value, default=str)))
        parts.append(f"{key}: {value}")
    return "; ".join(parts)


def _html_release(release: dict[str, Any]) -> str:
    from pipelines.reports.html import table

    def rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{**r, "time": rules.when(r["time"]), "evidence": _evidence(r.get("evidence")),
                 "problems": "; ".join(r.get("problems", [])) or "none"} for r in records]

    def section(records: list[dict[str, Any]], columns: list[str], empty: str) -> str:
        return table(rows(records), columns) if records else f"<p>{empty}</p>"

    return f"""<h2>Release history</h2><p>Stage now: <b>{_e(release['stage'])}</b></p>
{section(release['history'], ['time', 'from_stage', 'to_stage', 'action', 'actor', 'reason',
                              'evidence'], 'No stage changes: a candidate since its push.')}
<h3>Approvals</h3>{section(release['approvals'], ['time', 'actor', 'reason', 'evidence'],
                           'None yet.')}
<h3>Comparisons</h3>{section(release['comparisons'], ['time', 'baseline', 'version', 'mode',
                                                      'passed', 'actor', 'problems'],
                             'None recorded.')}"""


def write(card: dict[str, Any], out_dir: str) -> tuple[str, str]:
    """Writes ``model_card.html`` and ``model_card.json``; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    html_path = os.path.join(out_dir, "model_card.html")
    json_path = os.path.join(out_dir, "model_card.json")
    with open(json_path, "w") as f:
        json.dump(card, f, indent=2, sort_keys=True, default=str)
    with open(html_path, "w") as f:
        f.write(render_html(card))
    return html_path, json_path


def default_dir(home: str, model: str, version: str) -> str:
    return os.path.join(home, "reports", "model-cards", model, str(version))


def _round(value: Any) -> float | None:
    return None if value is None else round(float(value), 4)
