"""The Beam stages through Beam's portable job API, the path Flink and Spark runners take.

Beam's own Python job service (started here) runs CocoExampleGen, StatisticsGen and the
Evaluator of the tiny DAG with ``--runner=PortableRunner --environment_type=LOOPBACK``;
split hashes, statistics and the evaluation must equal the DirectRunner's.
"""

from __future__ import annotations

import glob
import json
import os
import socket
import subprocess
import sys
import time

import pytest

from pipelines.settings import BeamSettings
from tests.oracle_trainer import run_tiny

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
    assert os.path.dirname(local_runner.SETUP_FILE) == os.path.dirname(
        os.path.dirname(os.path.abspath(__file__)))


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
    service = subprocess.Popen(
        [sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main",
         "--port", str(port)], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while socket.socket().connect_ex(("localhost", port)) != 0:
        assert service.poll() is None and time.monotonic() < deadline, "no job service"
        time.sleep(0.2)
    yield f"localhost:{port}"
    service.terminate()
    service.wait(30)
    log.close()


def _statistics(home: str) -> dict[str, bytes]:
    from tensorflow_metadata.proto.v0 import statistics_pb2

    found = {}
    for path in glob.glob(os.path.join(home, "pipelines", "*", "StatisticsGen", "statistics",
                                       "*", "Split-*", "FeatureStats.pb")):
        stats = statistics_pb2.DatasetFeatureStatisticsList.FromString(open(path, "rb").read())
        found[os.path.basename(os.path.dirname(path))] = stats
    return found


@pytest.mark.slow
def test_the_portable_runner_gives_the_direct_runners_results(tmp_path, job_endpoint):
    portable_args = ["--runner=PortableRunner", f"--job_endpoint={job_endpoint}",
                     "--environment_type=LOOPBACK"]
    direct = run_tiny(str(tmp_path / "direct"))
    portable = run_tiny(str(tmp_path / "portable"), f"beam.extra_args={json.dumps(portable_args)}")
    for summary in (direct, portable):
        assert summary["status"] == "succeeded", summary.get("failure")
    assert portable["examples"]["splits"] == direct["examples"]["splits"]
    assert portable["examples"]["quarantined"] == direct["examples"]["quarantined"]
    direct_stats, portable_stats = _statistics(str(tmp_path / "direct")), _statistics(
        str(tmp_path / "portable"))
    assert sorted(direct_stats) == ["Split-eval", "Split-train"]
    assert portable_stats == direct_stats
    evaluations = [{k: v for k, v in s["evaluation"].items() if k != "uri"}
                   for s in (direct, portable)]
    assert evaluations[0]["overall"]["mAP"] > 0
    assert evaluations[1] == evaluations[0]  # mAP and every slice's metrics
    assert portable["blessed"] == direct["blessed"]
