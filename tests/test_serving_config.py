"""Config parsing (TF Serving's text formats) and the JSON codec, without a server."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from tensorflow.core.framework import types_pb2

from serving import json_codec
from serving.errors import ServingError
from serving.model_config import (
    BatchingConfig,
    parse_batching_parameters,
    parse_model_server_config,
    to_server_config,
)

# The format of TF Serving's own example (servables/tensorflow/testdata/batching_config.txt
# and the batching guide): Int64Value wrappers written as { value: N }.
TF_SERVING_BATCHING_FILE = """
max_batch_size { value: 128 }
batch_timeout_micros { value: 0 }
max_enqueued_batches { value: 1000000 }
num_batch_threads { value: 8 }
"""


def test_batching_parameters_parse_tf_servings_file():
    assert parse_batching_parameters(TF_SERVING_BATCHING_FILE) == BatchingConfig(
        max_batch_size=128, batch_timeout_micros=0, max_enqueued_batches=1000000,
        num_batch_threads=8)


def test_batching_parameters_defaults_are_tf_servings():
    config = parse_batching_parameters("allowed_batch_sizes: 4\nallowed_batch_sizes: 1000\n"
                                       "pad_variable_length_inputs: true\n"
                                       'thread_pool_name { value: "x" }')
    assert (config.max_batch_size, config.batch_timeout_micros,
            config.max_enqueued_batches) == (1000, 0, 10)
    assert config.allowed_batch_sizes == (4, 1000) and config.pad_variable_length_inputs


@pytest.mark.parametrize("text,message", [
    ("max_batch_size { value: 8 }\nallowed_batch_sizes: 2\nallowed_batch_sizes: 4",
     "Last entry in allowed_batch_sizes must match max_batch_size; last entry was 4; "
     "expected 8"),
    ("max_batch_size { value: 8 }\nallowed_batch_sizes: 4\nallowed_batch_sizes: 2\n"
     "allowed_batch_sizes: 8", "monotonically increasing"),
    ("max_batch_size: 8", "max_batch_size"),  # not a wrapper: TF Serving refuses it too
    ("max_batch_size { value: 8 }\nbatch_timeout { value: 1 }", "batch_timeout"),
    ("num_batch_threads { value: 0 }", "num_batch_threads must be >= 1"),
    ("enable_large_batch_splitting { value: true }", "not supported"),
])
def test_bad_batching_parameters_are_refused_with_the_reason(text, message):
    with pytest.raises(Exception, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_batching_parameters(text)


MODELS_CONFIG = """
model_config_list {
  config {
    name: "sightline"
    base_path: "/models/sightline"
    model_platform: "tensorflow"
    model_version_policy { specific { versions: 1556250435 versions: 1556251435 } }
    version_labels { key: "stable" value: 1556250435 }
    version_labels { key: "canary" value: 1556251435 }
    logging_config {
      log_collector_config { type: "" filename_prefix: "/logs/sightline/requests" }
      sampling_config { sampling_rate: 0.05 }
    }
  }
  config { name: "other" base_path: "/models/other" model_platform: "tensorflow"
           model_version_policy { latest { num_versions: 2 } } }
  config { name: "all" base_path: "/models/all" model_version_policy { all {} } }
}
"""


def test_model_server_config_parses_policies_labels_and_logging():
    sightline, other, every = parse_model_server_config(MODELS_CONFIG, max_bytes=1000)
    assert (sightline.policy, sightline.specific_versions) == ("specific",
                                                               (1556250435, 1556251435))
    assert sightline.label_map() == {"stable": 1556250435, "canary": 1556251435}
    assert sightline.logging.filename_prefix == "/logs/sightline/requests"
    assert (sightline.logging.sampling_rate, sightline.logging.max_bytes) == (0.05, 1000)
    assert (other.policy, other.num_versions, other.logging) == ("latest", 2, None)
    assert every.policy == "all"
    again = parse_model_server_config(str(to_server_config([sightline, other, every])),
                                      max_bytes=1000)
    assert again == [sightline, other, every]


@pytest.mark.parametrize("text,message", [
    ('model_config_list { config { name: "../x" base_path: "/m" } }', "invalid model name"),
    ('model_config_list { config { name: "a" base_path: "/m" } config { name: "a" '
     'base_path: "/n" } }', "repeated: a"),
    ('model_config_list { config { name: "a" } }', "base_path is empty"),
    ('model_config_list { config { name: "a" base_path: "/m" nme: 1 } }', "nme"),
])
def test_bad_model_configs_are_refused(text, message):
    with pytest.raises(Exception, match=message):
        parse_model_server_config(text)


# --------------------------------------------------------------------------- JSON codec


def f32(bits: int) -> np.float32:
    return np.frombuffer(struct.pack("<I", bits), np.float32)[0]


def test_floats_round_trip_to_the_same_float32_bits():
    rng = np.random.default_rng(0)
    values = np.concatenate([
        rng.standard_normal(2000).astype(np.float32),
        np.frombuffer(rng.integers(0, 2**31, 2000, dtype=np.uint32).tobytes(), np.float32),
        np.array([0.1, 1 / 3, 9000000, 3e-05, 1.0, 0.0, -0.0, 2.5e-45, 3.4028235e38,
                  f32(0x3DCCCCCD), f32(0x00000001)], np.float32)])
    values = values[np.isfinite(values)]
    text = json_codec.format_predict_response({"v": values[None]}, json_codec.ROW)
    back = np.array(json.loads(text)["predictions"][0], np.float32)
    assert back.tobytes() == values.tobytes()


def test_float_text_is_tf_servings_write_decimal():
    strs = json_codec.format_floats(np.array([0.1, 2.0, 9000000, 3e-05, 1 / 3, np.nan, -np.inf],
                                             np.float32))
    assert strs == ["0.1", "2.0", "9e+06", "3e-05", "0.333333343", "NaN", "-Infinity"]


def test_single_output_drops_its_name_and_multi_output_keeps_them():
    one = {"scores": np.array([[0.5, 0.25], [1.0, 0.0]], np.float32)}
    assert json.loads(json_codec.format_predict_response(one, json_codec.ROW)) == \
        {"predictions": [[0.5, 0.25], [1.0, 0.0]]}
    assert json.loads(json_codec.format_predict_response(one, json_codec.COLUMNAR)) == \
        {"outputs": [[0.5, 0.25], [1.0, 0.0]]}
    two = {**one, "n": np.array([1, 2], np.int32)}
    assert json.loads(json_codec.format_predict_response(two, json_codec.ROW)) == \
        {"predictions": [{"n": 1, "scores": [0.5, 0.25]}, {"n": 2, "scores": [1.0, 0.0]}]}
    assert json.loads(json_codec.format_predict_response(two, json_codec.COLUMNAR)) == \
        {"outputs": {"n": [1, 2], "scores": [[0.5, 0.25], [1.0, 0.0]]}}
    bad = {"a": np.zeros((2, 1), np.float32), "b": np.zeros(3, np.float32)}
    with pytest.raises(ServingError, match="Tensor name: b has inconsistent batch size: 3 "
                                           "expecting: 2"):
        json_codec.format_predict_response(bad, json_codec.ROW)


def test_bytes_outputs_named_bytes_are_base64():
    out = {"thumb_bytes": np.array([b"\x00\xff"], dtype=object)}
    assert json.loads(json_codec.format_predict_response(out, json_codec.ROW)) == \
        {"predictions": [{"b64": "AP8="}]}


TYPES = {"x": types_pb2.DT_FLOAT, "k": types_pb2.DT_INT64}


@pytest.mark.parametrize("body,message", [
    ({"instances": [{"x": [1.0], "k": 1}, {"x": [1.0, 2.0], "k": 2}]},
     "Failed to process element: 1 key: x of 'instances' list. Error: INVALID_ARGUMENT: "
     "Expecting tensor size: 1 but got: 2"),
    ({"instances": [1.0]}, "instances is a plain list, but expecting list of objects"),
    ({"instances": [{"x": 1.0}]}, "keys must be equal to: k,x"),
    ({"instances": [{"x": "a", "k": 1}]}, "is not of expected type: float"),
    ({"inputs": {"x": [1.0]}}, "Missing named input: k in 'inputs' object."),
    ({"inputs": {"x": [[1.0], [2.0, 3.0]], "k": [1]}},
     "Encountered list at unexpected size: 2 at level: 1 expected size: 1"),
    ({"inputs": {"x": [[1.0], 2.0], "k": [1]}}, "found at incorrect level: 2"),
    ({"instances": "x"}, "Expecting 'instances' to be an list/array"),
    ({"instances": []}, "No values in 'instances' array"),
    ({"signature_name": 3, "instances": [1]}, "'signature_name' key must be a string value."),
    ([1, 2], "Is not object"),
])
def test_request_errors_use_json_tensor_cc_wording(body, message):
    with pytest.raises(ServingError, match=message.replace("[", r"\[").replace("(", r"\(")) \
            as error:
        json_codec.parse_predict_request(json.dumps(body).encode(), lambda sig: TYPES)
    assert error.value.http_status == 400


def test_named_row_and_columnar_requests_build_the_same_tensors():
    row = {"instances": [{"x": [1.5, 2.0], "k": 3}, {"x": [0.25, -1.0], "k": 4}]}
    col = {"inputs": {"x": [[1.5, 2.0], [0.25, -1.0]], "k": [3, 4]}}
    for body, fmt in ((row, json_codec.ROW), (col, json_codec.COLUMNAR)):
        sig, inputs, got_fmt = json_codec.parse_predict_request(json.dumps(body).encode(),
                                                                lambda s: TYPES)
        assert (sig, got_fmt) == ("", fmt)
        assert inputs["x"].dtype == np.float32 and inputs["x"].tolist() == \
            [[1.5, 2.0], [0.25, -1.0]]
        assert inputs["k"].dtype == np.int64 and inputs["k"].tolist() == [3, 4]
