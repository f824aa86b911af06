"""notebooks/tfma_slices.ipynb runs headless (nbclient) against a real tiny pipeline run.

The kernel is this interpreter: a kernelspec written to a temp dir with sys.executable's
absolute path and put first on JUPYTER_PATH, so neither the venv's spec (argv "python")
nor a user-level "python3" spec decides which Python runs the notebook.
"""

import json
import pathlib
import re
import sys
import textwrap

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = pathlib.Path(__file__).resolve().parents[1] / "notebooks" / "tfma_slices.ipynb"
KERNEL = "sightline-test"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
# Appended to the executed copy only: which Python ran, and what the notebook computed.
PROBE = """import json, sys
print("PROBE " + json.dumps({"executable": sys.executable, "prefix": sys.prefix,
                             "slices": list(table.index), "columns": list(table.columns),
                             "mAP": table["mAP"].to_dict()}))"""
# Then the find-run cell again, in the same kernel, for a pipeline that has no run.
MISSING_RUN = """PIPELINE, RUN_ID = "no-such-pipeline", "latest"
try:
{find_run}
except runs.NoRunsError as error:
    print("NO RUN:", error)"""


def _execute(nb, tmp_path, monkeypatch, home: str, pipeline: str) -> None:
    from ipykernel.kernelspec import install

    prefix = tmp_path / "jupyter"
    install(kernel_name=KERNEL, prefix=str(prefix))
    monkeypatch.setenv("JUPYTER_PATH", str(prefix / "share" / "jupyter"))
    monkeypatch.setenv("SIGHTLINE_HOME", home)  # the kernel inherits os.environ
    monkeypatch.setenv("SIGHTLINE_PIPELINE", pipeline)
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")  # as the notebook sets it when unset
    NotebookClient(
        nb, kernel_name=KERNEL, timeout=180,
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},  # cwd as in Jupyter
    ).execute()


def _cell(nb, cell_id: str):
    return next(c for c in nb.cells if c.get("id") == cell_id)


def _probe(nb) -> dict:
    text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    return json.loads(re.search(r"^PROBE (.*)$", text, re.M).group(1))


def test_notebook_is_stored_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)
    assert nb.metadata.kernelspec.name == "python3"
    assert "widgets" not in nb.metadata


def test_tfma_slices_notebook_runs_on_the_tiny_run(tiny_run, tmp_path, monkeypatch):
    home, summary = tiny_run
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(PROBE))
    find_run = textwrap.indent(_cell(nb, "find-run").source, "    ")
    nb.cells.append(nbformat.v4.new_code_cell(MISSING_RUN.format(find_run=find_run)))
    _execute(nb, tmp_path, monkeypatch, home, summary["pipeline"])

    # The kernel was this venv's Python, not whatever "python" a kernelspec named.
    probe = _probe(nb)
    assert probe["executable"] == sys.executable and probe["prefix"] == sys.prefix

    # No cell wrote to stderr (a TFMA "Fail to find metrics for model name" warning would).
    stderr = [o.text for c in nb.cells for o in c.get("outputs", []) if o.get("name") == "stderr"]
    assert not stderr, stderr

    # The run shown is the fixture's run, with its evaluation.
    run_html = _cell(nb, "run").outputs[0].data["text/html"]
    assert summary["run_id"] in run_html and summary["evaluation"]["uri"] in run_html

    # The slice table: overall + every meta/* slice, an mAP column, the same numbers
    # as the run summary (read from the same TFMA output by pipelines.runs).
    table_html = _cell(nb, "metrics").outputs[0].data["text/html"]
    assert "<th>mAP</th>" in table_html and "<th>example_count</th>" in table_html
    assert re.search(r"<th>meta/camera=[^<]+</th>", table_html)
    assert re.search(r"<th>meta/lighting=[^<]+</th>", table_html)
    evaluation = summary["evaluation"]
    assert probe["slices"] == ["overall", *sorted(evaluation["slices"])]
    assert probe["mAP"]["overall"] == pytest.approx(evaluation["overall"]["mAP"], abs=1e-4)
    for name, metrics in evaluation["slices"].items():
        if "mAP" in metrics:  # a slice with too few images may keep only its size
            assert probe["mAP"][name] == pytest.approx(metrics["mAP"], abs=1e-4), name
    assert _cell(nb, "per-class").outputs[0].data["text/html"].count("<th>AP/") >= 1
    assert any("image/png" in o.get("data", {}) for o in _cell(nb, "chart").outputs)

    # TFMA's slicing view: one widget per column, its state holding that column's slices.
    state = nb.metadata.widgets[WIDGET_STATE]["state"]
    for cell_id, column in (("view-camera", "meta/camera"), ("view-lighting", "meta/lighting")):
        views = [o.data[WIDGET_VIEW] for o in _cell(nb, cell_id).outputs
                 if WIDGET_VIEW in o.get("data", {})]
        assert len(views) == 1, cell_id
        model = state[views[0]["model_id"]]
        assert model["model_name"] == "SlicingMetricsModel"
        slices = [row["slice"] for row in model["state"]["data"]]
        assert slices and all(s.startswith(f"{column}:") for s in slices), slices

    # Another pipeline's run is never shown: no run of this one is a clear error.
    assert "NO RUN: no run of pipeline 'no-such-pipeline'" in nb.cells[-1].outputs[0].text


@pytest.mark.slow
def test_tfma_slices_notebook_shows_the_change_versus_the_baseline(tmp_path, monkeypatch):
    """A second run is evaluated against the first's blessed model ("candidate"/"baseline")."""
    from tests.oracle_trainer import run_tiny  # no training, no edge branch: seconds

    home = str(tmp_path / "home")
    run_tiny(home)
    summary = run_tiny(home)
    assert summary["evaluation"]["baseline_overall"], "the second run needs a baseline"
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(PROBE))
    _execute(nb, tmp_path, monkeypatch, home, summary["pipeline"])

    probe = _probe(nb)
    assert "mAP_diff" in probe["columns"]  # candidate minus baseline
    assert "<th>mAP_diff</th>" in _cell(nb, "metrics").outputs[0].data["text/html"]
    assert probe["mAP"]["overall"] == pytest.approx(summary["evaluation"]["overall"]["mAP"],
                                                    abs=1e-4)
    state = nb.metadata.widgets[WIDGET_STATE]["state"]
    view = _cell(nb, "view-camera").outputs[0].data[WIDGET_VIEW]
    rows = state[view["model_id"]]["state"]["data"]
    assert all("mAP_diff" in row["metrics"][""][""] for row in rows)
