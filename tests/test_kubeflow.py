"""The Kubeflow package: compiled, parsed strictly against kfp-pipeline-spec, loaded by the
kfp client, and the Dockerfile that builds the image its steps run in.

No cluster and no docker daemon here: the image build is checked by reading the
Dockerfile against the Makefile's install and setup.py's packages.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import sys

import pytest
from click.testing import CliRunner
from google.protobuf import json_format

from pipelines import kubeflow_package, kubeflow_runner
from pipelines.cli import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE = "europe-docker.pkg.dev/acme/ml/sightline:2026-12-02"
ROOT = "gs://acme-ml/sightline/root"


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> str:
    output = str(tmp_path_factory.mktemp("kfp") / "sightline.json")
    result = CliRunner().invoke(main, ["compile", "--kubeflow", output, "--config", "tiny",
                                       "--image", IMAGE, "--pipeline-root", ROOT])
    assert result.exit_code == 0, result.output
    return output


def test_the_compiled_job_and_spec_parse_strictly(compiled):
    spec = kubeflow_package.check(compiled)
    assert spec.pipeline_info.name == "sightline-tiny"
    assert {"CocoExampleGen", "Trainer", "Evaluator", "Pusher"} <= set(spec.root.dag.tasks)
    with open(compiled) as f:
        job = json.load(f)
    assert job["runtimeConfig"]["gcsOutputDirectory"] == ROOT


def test_strict_parsing_rejects_a_field_the_schema_does_not_know(compiled, tmp_path):
    with open(compiled) as f:
        job = json.load(f)
    job["pipelineSpec"]["root"]["dag"]["taskz"] = {}
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(job))
    with pytest.raises(json_format.ParseError, match="taskz"):
        kubeflow_package.check(str(broken))


def test_the_spec_loads_in_the_kfp_client(compiled):
    from kfp import components
    from kfp.client import client

    spec_path = compiled[:-len(".json")] + ".yaml"
    assert components.load_component_from_file(spec_path).name == "sightline-tiny"
    # What Client.create_run_from_pipeline_package / create_recurring_run read it with.
    doc = client._extract_pipeline_yaml(spec_path)
    assert doc.pipeline_spec == kubeflow_package.check(compiled)


def test_every_step_runs_the_image_and_beam_gets_sightline_from_it(compiled):
    spec = kubeflow_package.check(compiled)
    executors = json_format.MessageToDict(spec.deployment_spec)["executors"].values()
    containers = [e["container"] for e in executors if "container" in e]
    assert containers and {c["image"] for c in containers} == {IMAGE}
    beam_args = [a for c in containers for a in c.get("args", []) if a.startswith("--")]
    assert f"--setup_file={kubeflow_runner.IMAGE_SETUP_FILE}" in beam_args


def test_the_note_says_how_to_submit(compiled):
    with open(compiled[:-len(".json")] + ".submit.md") as f:
        note = f.read()
    for words in (IMAGE, ROOT, "create_recurring_run(", "create_run_from_pipeline_package(",
                  "template_path=", compiled[:-len(".json")] + ".yaml"):
        assert words in note, words


# --- the Dockerfile --------------------------------------------------------------------------


def _read(name: str) -> str:
    with open(os.path.join(REPO, name)) as f:
        return f.read()


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", _read("Dockerfile"))
    lines = [line.strip() for line in text.splitlines()]
    return [tuple(line.split(None, 1)) for line in lines if line and not line.startswith("#")]


def test_the_image_installs_with_the_makefiles_pip_flags():
    makefile = _read("Makefile")
    flags = re.search(r"^PIP_INSTALL := \$\(BIN\)/pip install (.+)$", makefile, re.M).group(1)
    pip_pin = re.search(r"pip install -q --upgrade (pip==\S+)", makefile).group(1)
    runs = [args for op, args in _instructions() if op == "RUN"]
    assert any(pip_pin in shlex.split(run) for run in runs)
    [install] = [run for run in runs if "-c" in shlex.split(run)]
    assert f"pip install {flags} -e ." in install  # editable: setup.py stays at its path


def test_the_image_copies_what_setup_py_packages_and_sets_legacy_keras():
    tree = ast.parse(_read("setup.py"))
    [packages] = [ast.literal_eval(node.value) for node in tree.body
                  if isinstance(node, ast.Assign) and node.targets[0].id == "PACKAGES"]
    copied = {src for op, args in _instructions() if op == "COPY"
              for src in shlex.split(args)[:-1]}
    assert {"setup.py", "pyproject.toml", "constraints.txt", *packages} <= copied
    instructions = dict(_instructions())
    assert instructions["WORKDIR"] == os.path.dirname(kubeflow_runner.IMAGE_SETUP_FILE)
    assert "TF_USE_LEGACY_KERAS=1" in instructions["ENV"]
    python = re.match(r"python:(\d+\.\d+)", instructions["FROM"]).group(1)
    assert python == f"{sys.version_info.major}.{sys.version_info.minor}"
    beam = re.search(r"^apache-beam==(\S+)$", _read("constraints.txt"), re.M).group(1)
    assert any(args.startswith(f"--from=apache/beam_python{python}_sdk:{beam} ")
               for op, args in _instructions() if op == "COPY")  # Beam's worker boot
    ignored = _read(".dockerignore").split()
    assert {".venv", ".sightline", ".git"} <= set(ignored)
