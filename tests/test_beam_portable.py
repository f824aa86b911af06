"""The Beam stages through Beam's portable job API, the path Flink and Spark runners take.

Beam's own Python job service (started here) runs CocoExampleGen, StatisticsGen and the
Evaluator of the tiny DAG with ``--runner=PortableRunner --environment_type=LOOPBACK``;
split hashes, statistics and the evaluation must equal the DirectRunner's.
"""

from __future__ import annotations

import glob
import json
import math
import os
import socket
import subprocess
import sys
import time

import pytest

from pipelines.settings import BeamSettings
from tests.oracle_trainer import run_tiny

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# --- the flags, fast ---------------------------------------------------------------------


def test_another_runner_drops_the_direct_runner_flags():
    portable = BeamSettings(extra_args=("--runner=PortableRunner", "--job_endpoint=h:1"))
    assert portable.pipeline_args() == ["--runner=PortableRunner", "--job_endpoint=h:1"]
    assert BeamSettings().pipeline_args()[0] == "--direct_running_mode=in_memory"


def test_workers_get_sightline_from_its_setup_file_unless_told_otherwise():
    """Without a dependency flag TFX copies itself (~50 MB) into /tmp at every Beam stage."""
    added = BeamSettings().with_setup_file("/src/setup.py")
    assert added.pipeline_args()[-1] == "--setup_file=/src/setup.py"
    image = BeamSettings(extra_args=("--sdk_container_image=ghcr.io/x/sightline:1",))
    assert image.with_setup_file("/src/setup.py") is image
    assert BeamSettings().with_setup_file(None) == BeamSettings()


def test_a_local_run_passes_the_repository_setup_file(tmp_path):
    from pipelines import configs, local_runner

    config = configs.load("tiny", ["edge.enabled=false"])
    paths = configs.Paths(str(tmp_path), config.pipeline_name)
    args = local_runner.build(config, paths, str(tmp_path)).beam_pipeline_args
    assert f"--setup_file={local_runner.SETUP_FILE}" in args
    assert os.path.dirname(local_runner.SETUP_FILE) == REPO


# --- the real DAG, slow -------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def job_endpoint(tmp_path_factory):
    """Beam's Python job service in a process of its own, stopped afterwards."""
    port = _free_port()
    log = open(tmp_path_factory.mktemp("job_service") / "log", "w")  # noqa: SIM115
    service = subprocess.Popen(  # from the repository: subprocess workers import its code
        [sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main",
         "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    deadline = time.monotonic() + 60
    while socket.socket().connect_ex(("localhost", port)) != 0:
        assert service.poll() is None and time.monotonic() < deadline, "no job service"
        time.sleep(0.2)
    yield f"localhost:{port}"
    service.terminate()
    service.wait(30)
    log.close()


def _statistics(home: str) -> dict[str, dict]:
    """{split: {feature path or "": its statistics as a dict}}: runners order features
    differently, so each is keyed by its path."""
    from google.protobuf import json_format
    from tensorflow_metadata.proto.v0 import statistics_pb2

    found = {}
    for path in glob.glob(os.path.join(home, "pipelines", "*", "StatisticsGen", "statistics",
                                       "*", "Split-*", "FeatureStats.pb")):
        with open(path, "rb") as f:
            [dataset] = statistics_pb2.DatasetFeatureStatisticsList.FromString(f.read()).datasets
        features = {"/".join(f.path.step): json_format.MessageToDict(f) for f in dataset.features}
        dataset.ClearField("features")
        found[os.path.basename(os.path.dirname(path))] = {
            "": json_format.MessageToDict(dataset), **features}
    return found


def _same(a, b) -> bool:
    """Equal, floats to 1e-12: Beam merges partial sums in a runner-dependent order, so a
    mean or std_dev may differ in its last bit; counts, quantiles and histograms may not."""
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(map(_same, a, b))
    return a == b


def _results(home: str, *overrides: str) -> dict:
    summary = run_tiny(home, *overrides)
    assert summary["status"] == "succeeded", summary.get("failure")
    return {"examples": summary["examples"]["splits"],
            "quarantined": summary["examples"]["quarantined"],
            "statistics": _statistics(home),
            "evaluation": {k: v for k, v in summary["evaluation"].items() if k != "uri"},
            "blessed": summary["blessed"]}


@pytest.fixture(scope="module")
def direct(tmp_path_factory) -> dict:
    return _results(str(tmp_path_factory.mktemp("direct")))


# LOOPBACK runs the SDK worker in the submitting process; the subprocess environment
# starts a separate worker process, so state that only exists in-process would be lost.
ENVIRONMENTS = {
    "loopback": ["--environment_type=LOOPBACK"],
    "subprocess": ["--environment_type=beam:env:harness_subprocess_python:v1",
                   f"--environment_config={sys.executable} -m "
                   "apache_beam.runners.worker.sdk_worker_main"],
}


@pytest.mark.slow
@pytest.mark.parametrize("environment", sorted(ENVIRONMENTS))
def test_the_portable_runner_gives_the_direct_runners_results(tmp_path, job_endpoint, direct,
                                                             environment):
    args = ["--runner=PortableRunner", f"--job_endpoint={job_endpoint}",
            *ENVIRONMENTS[environment]]
    portable = _results(str(tmp_path), f"beam.extra_args={json.dumps(args)}")
    assert portable["examples"] == direct["examples"]  # split counts and content hashes
    assert portable["quarantined"] == direct["quarantined"]
    assert sorted(direct["statistics"]) == ["Split-eval", "Split-train"]
    assert _same(portable["statistics"], direct["statistics"])
    assert direct["evaluation"]["overall"]["mAP"] > 0
    assert portable["evaluation"] == direct["evaluation"]  # mAP and every slice's metrics
    assert portable["blessed"] == direct["blessed"]
