"""gRPC conformance with the official tensorflow-serving-api stubs, on a real server."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from tests import serving_fixture as sf


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    sf.copy_version(sf.exported_model(0), root / "det", 1)
    sf.copy_version(sf.exported_model(1), root / "other", 3)
    srv = sf.make_server([sf.model("det", root / "det", labels=(("stable", 1),))])
    channel = grpc.insecure_channel(f"127.0.0.1:{srv.grpc_port}")
    yield srv, channel, root
    channel.close()
    srv.stop()


@pytest.fixture(scope="module")
def stubs(setup):
    _, channel, _ = setup
    return (prediction_service_pb2_grpc.PredictionServiceStub(channel),
            model_service_pb2_grpc.ModelServiceStub(channel))


def predict_request(images: list[bytes], name: str = "det", **spec) -> predict_pb2.PredictRequest:
    import tensorflow as tf

    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    for key, value in spec.items():
        if key == "version":
            request.model_spec.version.value = value
        else:
            setattr(request.model_spec, key, value)
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(images))
    return request


def arrays(response) -> dict[str, np.ndarray]:
    import tensorflow as tf

    return {k: tf.make_ndarray(v) for k, v in response.outputs.items()}


def test_predict_equals_the_saved_model_bit_for_bit(stubs):
    prediction, _ = stubs
    images = [sf.encode_image(5), sf.encode_image(6, "PNG")]
    response = prediction.Predict(predict_request(images), timeout=30)
    want = sf.reference_outputs(sf.exported_model(0), images)
    got = arrays(response)
    assert sorted(got) == sorted(want)
    for key in want:
        assert got[key].dtype == want[key].dtype
        assert got[key].tobytes() == want[key].tobytes(), key
    assert response.model_spec.name == "det"
    assert response.model_spec.version.value == 1
    assert response.model_spec.signature_name == "serving_default"


def test_output_filter_version_and_label(stubs):
    prediction, _ = stubs
    images = [sf.encode_image(7)]
    want = sf.reference_outputs(sf.exported_model(0), images)
    for spec in ({}, {"version": 1}, {"version_label": "stable"}):
        request = predict_request(images, **spec)
        request.output_filter.append("detection_scores")
        response = prediction.Predict(request, timeout=30)
        assert list(response.outputs) == ["detection_scores"]
        assert arrays(response)["detection_scores"].tobytes() == \
            want["detection_scores"].tobytes()
        assert response.model_spec.version.value == 1


@pytest.mark.parametrize("mutate,code,message", [
    (lambda r: r.output_filter.append("boxes"), grpc.StatusCode.INVALID_ARGUMENT,
     "output tensor alias not found in signature: boxes Outputs expected to be in the set"),
    (lambda r: r.model_spec.version.__setattr__("value", 9), grpc.StatusCode.NOT_FOUND,
     "Servable not found for request: Specific(det, 9)"),
    (lambda r: r.model_spec.__setattr__("version_label", "canary"),
     grpc.StatusCode.INVALID_ARGUMENT, "Unrecognized servable version label: canary"),
    (lambda r: r.model_spec.__setattr__("name", "nope"), grpc.StatusCode.NOT_FOUND,
     "Servable not found for request: Latest(nope)"),
    (lambda r: r.model_spec.__setattr__("signature_name", "nope"),
     grpc.StatusCode.FAILED_PRECONDITION, 'Serving signature key "nope" not found.'),
    (lambda r: r.inputs["extra"].CopyFrom(r.inputs["images"]), grpc.StatusCode.INVALID_ARGUMENT,
     "input size does not match signature: 2!=1 len({extra,images}) != len({images}). "
     "Sent extra: {extra}. Missing but required: {}."),
    (lambda r: r.inputs["images"].string_val.__setitem__(0, b"not an image"),
     grpc.StatusCode.INVALID_ARGUMENT, "Unknown image file format"),
])
def test_errors_have_tf_servings_codes_and_the_server_keeps_serving(stubs, mutate, code,
                                                                    message):
    prediction, _ = stubs
    request = predict_request([sf.encode_image(8)])
    mutate(request)
    with pytest.raises(grpc.RpcError) as error:
        prediction.Predict(request, timeout=30)
    assert error.value.code() == code
    assert message in error.value.details()
    assert prediction.Predict(predict_request([sf.encode_image(8)]), timeout=30).outputs


def test_get_model_metadata_returns_the_signature_defs(stubs):
    prediction, _ = stubs
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "det"
    response = prediction.GetModelMetadata(request, timeout=30)
    assert response.model_spec.version.value == 1
    defs = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(defs)
    assert sorted(defs.signature_def) == ["serving_default", "serving_examples"]
    assert list(defs.signature_def["serving_default"].inputs) == ["images"]
    del request.metadata_field[:]
    with pytest.raises(grpc.RpcError) as error:
        prediction.GetModelMetadata(request, timeout=30)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "must specify at least one metadata_field" in error.value.details()


def test_get_model_status(stubs):
    _, models = stubs
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "det"
    response = models.GetModelStatus(request, timeout=30)
    assert [(s.version, s.state, s.status.error_code) for s in response.model_version_status] \
        == [(1, get_model_status_pb2.ModelVersionStatus.AVAILABLE, 0)]
    request.model_spec.name = "nope"
    with pytest.raises(grpc.RpcError) as error:
        models.GetModelStatus(request, timeout=30)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


def test_handle_reload_config_adds_a_model_and_checks_labels(setup, stubs):
    _, _, root = setup
    prediction, models = stubs
    request = model_management_pb2.ReloadConfigRequest()
    configs = request.config.model_config_list.config
    configs.add(name="det", base_path=str(root / "det"), model_platform="tensorflow")
    configs[0].version_labels["stable"] = 1
    configs.add(name="other", base_path=str(root / "other"), model_platform="tensorflow")
    response = models.HandleReloadConfigRequest(request, timeout=60)
    assert response.status.error_code == 0
    images = [sf.encode_image(9)]
    got = arrays(prediction.Predict(predict_request(images, name="other"), timeout=30))
    want = sf.reference_outputs(sf.exported_model(1), images)
    assert got["detection_scores"].tobytes() == want["detection_scores"].tobytes()
    # A label naming a version that is not loaded fails the reload, as in TF Serving.
    configs[1].version_labels["canary"] = 4
    with pytest.raises(grpc.RpcError) as error:
        models.HandleReloadConfigRequest(request, timeout=60)
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "Request to assign label to version 4 of model other, which is not currently " \
           "available for inference" in error.value.details()
    assert prediction.Predict(predict_request(images, name="other"), timeout=30).outputs
