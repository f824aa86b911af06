"""Text from the user's COCO file (class names, camera values) is escaped wherever it is
rendered: the HTML reports and the terminal summary. One real tiny run on data whose
class and camera names are HTML."""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner

from data import synth
from pipelines.cli import main
from schemas import DEFAULT_SCHEMA_PATH
from tests.oracle_trainer import run_tiny

EVIL_CLASS = '<script>alert("class")</script>'
EVIL_CAMERA = "<img src=x onerror=alert(1)>"

pytestmark = pytest.mark.slow  # a DAG run


def _pbtxt(text: str) -> str:
    return json.dumps(text)  # a valid text-proto string literal for these characters


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("hostile")
    path = synth.generate(root / "data", 48, seed=7)
    coco = json.loads(path.read_text())
    renamed = {c["id"]: c["name"] for c in coco["categories"]}
    circle = next(i for i, name in renamed.items() if name == "circle")
    for category in coco["categories"]:
        if category["id"] == circle:
            category["name"] = EVIL_CLASS
    for image in coco["images"]:
        if image["camera"] == "cam-b":
            image["camera"] = EVIL_CAMERA
    path.write_text(json.dumps(coco))
    schema = open(DEFAULT_SCHEMA_PATH).read()
    schema = schema.replace('value: "circle"', f"value: {_pbtxt(EVIL_CLASS)}")
    schema = schema.replace('value: "cam-b"', f"value: {_pbtxt(EVIL_CAMERA)}")
    schema_path = root / "schema.pbtxt"
    schema_path.write_text(schema)
    home = str(root / "home")
    summary = run_tiny(home, f"data.root={root / 'data'}", f"data.schema_path={schema_path}")
    assert summary["status"] == "succeeded", summary.get("failure")
    return {"home": home, "summary": summary, "out": root / "reports"}


def _page(hostile_run, *command: str) -> str:
    out = str(hostile_run["out"] / command[-1])
    result = CliRunner().invoke(main, [*command[:-1], "--home", hostile_run["home"],
                                       "--out", out])
    assert result.exit_code == 0, result.output
    with open(os.path.join(out, "report.html")) as f:
        return f.read()


@pytest.mark.parametrize("command", [("report", "evaluation"), ("data", "report", "data")])
def test_reports_escape_class_and_camera_names(hostile_run, command):
    page = _page(hostile_run, *command)
    assert EVIL_CLASS not in page and EVIL_CAMERA not in page
    assert "&lt;script&gt;" in page or "&lt;img src=x" in page  # the names are shown, as text


def test_evaluation_report_shows_both_names_as_text(hostile_run):
    page = _page(hostile_run, "report", "evaluation-again")
    assert "&lt;script&gt;alert(&quot;class&quot;)&lt;/script&gt;" in page  # per-class table
    assert "meta/camera=&lt;img src=x onerror=alert(1)&gt;" in page  # slice table


def test_terminal_summary_prints_the_names_literally(hostile_run):
    result = CliRunner().invoke(main, ["runs", "show", "--home", hostile_run["home"]])
    assert result.exit_code == 0, result.output
    assert "<script>alert(" in result.output  # class_names in the hparams line, not markup
