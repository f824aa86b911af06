"""REST conformance with TF Serving's API, on a real server: shapes, bits, errors, metrics."""

from __future__ import annotations

import http.client
import json
import os

import numpy as np
import pytest

from tests import serving_fixture as sf

MAX_BODY = 1 << 20


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("models") / "det"
    sf.copy_version(sf.exported_model(0), base, 1)
    srv = sf.make_server([sf.model("det", base, labels=(("stable", 1),))],
                         rest_max_body_bytes=MAX_BODY)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def images() -> list[bytes]:
    return [sf.encode_image(1), sf.encode_image(2, "PNG", (70, 50)), sf.encode_image(3)]


def call(server, method: str, path: str, body: bytes | str | None = None,
         headers: dict | None = None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
        return response.status, json.loads(data) if data else {}
    finally:
        conn.close()


def predict(server, body: dict | bytes | str, path: str = "/v1/models/det:predict"):
    payload = body if isinstance(body, bytes | str) else json.dumps(body)
    return call(server, "POST", path, payload)


def as_arrays(rows: list[dict], reference: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Row-format predictions -> arrays with the reference's dtypes (exact for float32)."""
    return {k: np.array([row[k] for row in rows], dtype=reference[k].dtype) for k in reference}


def assert_bit_equal(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert sorted(got) == sorted(want)
    for key in want:
        assert got[key].shape == want[key].shape, key
        assert got[key].tobytes() == want[key].tobytes(), f"{key} differs"


def test_status_has_tf_servings_shape(server):
    want = {"model_version_status": [{"version": "1", "state": "AVAILABLE",
                                      "status": {"error_code": "OK", "error_message": ""}}]}
    for path in ("/v1/models/det", "/v1/models/det/versions/1", "/v1/models/det/labels/stable"):
        assert call(server, "GET", path) == (200, want), path


def test_metadata_renders_the_signature_defs(server):
    status, body = call(server, "GET", "/v1/models/det/metadata")
    assert status == 200
    assert body["model_spec"] == {"name": "det", "version": "1", "signature_name": ""}
    defs = body["metadata"]["signature_def"]["signature_def"]
    assert sorted(defs) == ["serving_default", "serving_examples"]
    images = defs["serving_default"]["inputs"]["images"]
    assert images["dtype"] == "DT_STRING"
    assert images["tensor_shape"] == {"dim": [{"size": "-1", "name": ""}],
                                      "unknown_rank": False}
    want_outputs = sf.reference(sf.exported_model(0)).structured_outputs
    assert sorted(defs["serving_default"]["outputs"]) == sorted(want_outputs)
    assert defs["serving_default"]["method_name"] == "tensorflow/serving/predict"
    assert defs["serving_default"]["outputs"]["detection_boxes"]["tensor_shape"]["dim"][1] == \
        {"size": str(sf.MAX_DETECTIONS), "name": ""}
    for path in ("/v1/models/det/versions/1/metadata", "/v1/models/det/labels/stable/metadata"):
        assert call(server, "GET", path) == (200, body), path
    assert call(server, "GET", "/v1/models/det/versions/2/metadata") == (
        404, {"error": "Servable not found for request: Specific(det, 2)"})


def test_row_format_b64_equals_the_saved_model_bit_for_bit(server, images):
    want = sf.reference_outputs(sf.exported_model(0), images)
    status, body = predict(server, {"instances": [sf.b64(i) for i in images]})
    assert status == 200, body
    assert list(body) == ["predictions"] and len(body["predictions"]) == 3
    assert_bit_equal(as_arrays(body["predictions"], want), want)


def test_columnar_format_returns_outputs_by_name(server, images):
    want = sf.reference_outputs(sf.exported_model(0), images[:2])
    for inputs in ([sf.b64(i) for i in images[:2]], {"images": [sf.b64(i) for i in images[:2]]}):
        status, body = predict(server, {"signature_name": "serving_default", "inputs": inputs})
        assert status == 200, body
        got = {k: np.array(v, dtype=want[k].dtype) for k, v in body["outputs"].items()}
        assert_bit_equal(got, want)


def test_named_instances_and_version_and_label_paths_agree(server, images):
    want = sf.reference_outputs(sf.exported_model(0), images[:1])
    for path in ("/v1/models/det:predict", "/v1/models/det/versions/1:predict",
                 "/v1/models/det/labels/stable:predict", "/V1/MODELS/det:PREDICT"):
        status, body = predict(server, {"instances": [{"images": sf.b64(images[0])}]}, path)
        assert status == 200, (path, body)
        assert_bit_equal(as_arrays(body["predictions"], want), want)


def test_serving_examples_signature_takes_tf_examples(server, images):
    from data import feature_spec as fs

    examples = [fs.build_example(encoded=img, image_format="jpeg", height=40, width=48,
                                 source_id=str(i), boxes=[], labels=[], texts=[]
                                 ).SerializeToString()
                for i, img in enumerate([images[0], images[2]])]
    want = sf.reference_outputs(sf.exported_model(0), examples, "serving_examples")
    status, body = predict(server, {"signature_name": "serving_examples",
                                    "instances": [sf.b64(e) for e in examples]})
    assert status == 200, body
    assert_bit_equal(as_arrays(body["predictions"], want), want)


BAD_REQUESTS = [
    ("invalid json", "/v1/models/det:predict", '{"instances": [', 400, "JSON Parse error"),
    ("empty body", "/v1/models/det:predict", "", 400, "The document is empty"),
    ("bad base64", "/v1/models/det:predict", {"instances": [{"b64": "@@not base64@@"}]}, 400,
     "Unable to base64 decode"),
    ("both keys", "/v1/models/det:predict", {"instances": [], "inputs": []}, 400,
     "expecting only one of 'inputs' or 'instances' keys"),
    ("neither key", "/v1/models/det:predict", {"signature_name": "serving_default"}, 400,
     "Missing 'inputs' or 'instances' key"),
    ("unknown signature", "/v1/models/det:predict",
     {"signature_name": "nope", "instances": [{"b64": "AAAA"}]}, 400,
     'Serving signature name: "nope" not found in signature def'),
    ("not an image", "/v1/models/det:predict", {"instances": [sf.b64(b"hello, not a jpeg")]},
     400, "Unknown image file format: expected JPEG or PNG"),
    ("a GIF", "/v1/models/det:predict", {"instances": [sf.b64(sf.encode_image(4, "GIF"))]},
     400, "Unknown image file format: expected JPEG or PNG"),
    ("number for bytes", "/v1/models/det:predict", {"instances": [1.5]}, 400,
     "is not of expected type: string"),
    ("unknown model", "/v1/models/nope:predict", {"instances": [{"b64": "AAAA"}]}, 404,
     "Servable not found for request: Latest(nope)"),
    ("unknown version", "/v1/models/det/versions/7:predict",
     {"instances": [{"b64": "AAAA"}]}, 404, "Servable not found for request: Specific(det, 7)"),
    ("unknown label", "/v1/models/det/labels/canary:predict",
     {"instances": [{"b64": "AAAA"}]}, 400, "Unrecognized servable version label: canary"),
    ("dot-dot name", "/v1/models/../etc:predict", {"instances": []}, 400, "Malformed request"),
    ("encoded slash", "/v1/models/..%2Fetc%2Fpasswd:predict", {"instances": []}, 400,
     "Invalid model name"),
    ("encoded dots", "/v1/models/%2E%2E:predict", {"instances": []}, 400,
     "Invalid model name"),
    ("classify", "/v1/models/det:classify", {"examples": []}, 501, "classify is not supported"),
    ("bad path", "/v1/models/det/versions/x:predict", {"instances": []}, 400,
     "Malformed request: POST /v1/models/det/versions/x:predict"),
]


@pytest.mark.parametrize("path,body,code,message",
                         [case[1:] for case in BAD_REQUESTS], ids=[c[0] for c in BAD_REQUESTS])
def test_bad_request_gets_its_status_and_message_and_the_server_keeps_serving(
        server, images, path, body, code, message):
    status, answer = predict(server, body, path)
    assert status == code, answer
    assert list(answer) == ["error"] and message in answer["error"], answer
    status, answer = predict(server, {"instances": [sf.b64(images[0])]})
    assert status == 200 and len(answer["predictions"]) == 1


def test_status_errors(server):
    assert call(server, "GET", "/v1/models/nope") == (
        404, {"error": "Could not find any versions of model nope"})
    assert call(server, "GET", "/v1/models/det/versions/9") == (
        404, {"error": "Could not find version 9 of model det"})
    assert call(server, "GET", "/v1/models/det/labels/x") == (
        400, {"error": "Unrecognized servable version label: x"})
    assert call(server, "GET", "/v1/models") == (400, {"error": "Missing model name in request."})


def test_oversized_body_is_refused_before_reading_it(server, images):
    body = json.dumps({"instances": [sf.b64(os.urandom(MAX_BODY))]})
    status, answer = predict(server, body)
    assert status == 413
    assert f"the limit is {MAX_BODY} bytes" in answer["error"]
    status, answer = predict(server, {"instances": [sf.b64(images[0])]})
    assert status == 200


def test_metrics_count_requests_by_labels(server, images):
    for _ in range(2):
        assert predict(server, {"instances": [sf.b64(images[0])]})[0] == 200
    predict(server, {"instances": [sf.b64(b"junk")]})
    conn = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=10)
    conn.request("GET", "/monitoring/prometheus/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    ok = ('sightline_serving_requests_total{api="rest",model="det",signature="serving_default",'
          'status="OK",version="1"}')
    bad = ok.replace('status="OK"', 'status="INVALID_ARGUMENT"')
    assert samples[ok] >= 2 and samples[bad] >= 1
    count = ('sightline_serving_request_latency_seconds_count{api="rest",model="det",'
             'signature="serving_default",version="1"}')
    assert samples[count] >= samples[ok]
    assert samples['sightline_serving_model_loads_total{model="det",outcome="success"}'] == 1
    assert samples['sightline_serving_loaded_versions{model="det"}'] == 1
    depth = ('sightline_serving_queue_depth{model="det",signature="serving_default",'
             'version="1"}')
    assert samples[depth] == 0  # nothing in flight once the answers are back


def test_missing_model_directory_is_one_line_error(tmp_path):
    from click.testing import CliRunner

    from serving.cli import serve

    result = CliRunner().invoke(serve, ["--home", str(tmp_path), "--port", "0",
                                        "--rest_api_port", "0"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"Error: no model directory at {tmp_path}/serving/sightline: push one with `make run` "
        "/ `sightline run`, or pass --model_base_path"]
