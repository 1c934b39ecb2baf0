"""Serving up to the server: the export's warmup and signature, the REST and gRPC clients, and the
protocol-true testing server (serving/testing_server.py; TF Serving's binary is not installable here)."""

import socket
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2, prediction_service_pb2_grpc

import kzoo
from kzoo import data as kdata
from kzoo.serving.client import GrpcClient, RestClient, ServerUnreachable, ServingError, load_signature
from kzoo.serving.requests import columns, grpc_request
from kzoo.serving.testing_server import serve

# One worker runs this module: its module-scoped fixture trains and exports once (tests/run_all.sh
# runs pytest-xdist with --dist loadgroup), not once per worker.
pytestmark = pytest.mark.xdist_group("serving")

REPO = Path(__file__).resolve().parents[1]
NAME = "kzoo"


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serving")
    kzoo.train(REPO / "zoo_configs" / "lr.json", "synthetic:1600", tmp / "run", epochs=1, batch_size=128, verbose=0)
    return Path(kzoo.export(tmp / "run", tmp / "exports"))


@pytest.fixture(scope="module")
def server(export_dir):
    # An interrupted export's leftover beside version 1: TF Serving never loads it, and neither
    # may the testing server (its saved_model.pb is garbage, so loading it would fail).
    leftover = export_dir.parent / ".tmp-2-999"
    leftover.mkdir()
    (leftover / "saved_model.pb").write_bytes(b"not a SavedModel")
    with serve(export_dir.parent, NAME) as running:
        yield running


@pytest.fixture(scope="module")
def rows():
    frame = kdata.synthetic(6, seed=7).drop(columns=["label"])
    frame.loc[0, "I1"] = np.nan  # a missing numeric
    frame.loc[1, "C1"] = "never-seen-in-training"  # an unseen category
    return frame.to_dict("records")


@pytest.fixture(scope="module")
def serving_fn(export_dir):
    return tf.saved_model.load(str(export_dir)).signatures["serving_default"]


@pytest.fixture(scope="module")
def direct(serving_fn):
    """Calls the SavedModel's serving_default in this process: the reference for every protocol."""
    fn = serving_fn
    inputs = fn.structured_input_signature[1]

    def call(rows):
        cols = columns(rows, inputs)
        out = fn(**{k: tf.constant(v.tolist() if v.dtype == object else v, inputs[k].dtype) for k, v in cols.items()})
        return {k: v.numpy() for k, v in out.items()}

    return call


def assert_same(got: dict, want: dict):
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name].shape == want[name].shape, name
        np.testing.assert_allclose(got[name], want[name], rtol=0, atol=1e-6, err_msg=name)


def test_warmup_requests_match_the_signature(export_dir, server, serving_fn):
    expected = {k: s.dtype.as_datatype_enum for k, s in serving_fn.structured_input_signature[1].items()}
    records = list(tf.data.TFRecordDataset(str(export_dir / "assets.extra" / "tf_serving_warmup_requests")))
    assert records
    for record in records:
        log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        assert log.WhichOneof("log_type") == "predict_log"
        request = log.predict_log.request
        assert request.model_spec.signature_name == "serving_default"
        assert {k: t.dtype for k, t in request.inputs.items()} == expected
        assert len({tuple(d.size for d in t.tensor_shape.dim) for t in request.inputs.values()}) == 1
    assert server.model.warmup_replayed == len(records)
    assert load_signature(export_dir).inputs == {k: tf.as_dtype(v).name for k, v in expected.items()}


def test_grpc_predict_equals_the_saved_model(server, export_dir, rows, direct):
    with GrpcClient(server.grpc_target, NAME, export_dir) as client:
        got = client.predict(rows)
    want = direct(rows)
    assert_same(got, want)
    assert np.isfinite(got["ctr"]).all()


@pytest.mark.parametrize("columnar", [False, True], ids=["row", "columnar"])
def test_rest_predict_equals_the_saved_model(server, export_dir, rows, direct, columnar):
    assert_same(RestClient(server.rest_url, NAME, export_dir).predict(rows, columnar=columnar), direct(rows))


def test_signature_from_server_metadata(server, rows, direct):
    assert_same(RestClient(server.rest_url, NAME).predict(rows), direct(rows))
    with GrpcClient(server.grpc_target, NAME) as client:
        assert_same(client.predict(rows), direct(rows))


def test_client_casts_int64_to_the_declared_float32(server, export_dir, rows, direct):
    cols = {k: np.array([r[k] for r in rows]) for k in rows[0]}
    cols["I2"] = np.arange(len(rows), dtype=np.int64)
    with GrpcClient(server.grpc_target, NAME, export_dir) as client:
        assert client.request(cols).inputs["I2"].dtype == tf.float32.as_datatype_enum
        assert_same(client.predict(cols), direct(cols))
    assert_same(RestClient(server.rest_url, NAME, export_dir).predict(cols), direct(cols))


def test_server_rejects_a_wrongly_typed_or_named_input(server, export_dir, rows):
    signature = load_signature(export_dir).inputs
    request = grpc_request(rows, signature, model_name=NAME)
    request.inputs["I2"].CopyFrom(tf.make_tensor_proto(np.arange(len(rows), dtype=np.int64)))
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.Predict(request, timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "to be float but int64 is provided" in err.value.details()

        request = grpc_request(rows, signature, model_name=NAME)
        request.inputs["I2_typo"].CopyFrom(request.inputs.pop("I2"))
        with pytest.raises(grpc.RpcError) as err:
            stub.Predict(request, timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "I2_typo" in err.value.details()


def test_leftover_tmp_folder_is_ignored(server, export_dir):
    assert (export_dir.parent / ".tmp-2-999").is_dir()
    assert server.model.version == int(export_dir.name) == 1
    status = RestClient(server.rest_url, NAME).status()
    assert [s["version"] for s in status["model_version_status"]] == ["1"]
    with pytest.raises(ServingError, match=r"HTTP 404.*Servable not found for request: Specific\(kzoo, 2\)"):
        RestClient(server.rest_url, NAME, export_dir, version=2).predict([])


def test_http_error_shows_the_servers_message(server, export_dir, rows):
    with pytest.raises(ServingError, match=r"HTTP 404: Servable not found for request: Latest\(nope\)") as err:
        RestClient(server.rest_url, "nope", export_dir).predict(rows)
    assert err.value.code == 404


def test_unreachable_server_is_named():
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    signature = {"I1": "float32"}
    with pytest.raises(ServerUnreachable, match=f"http://127.0.0.1:{port}/v1/models/kzoo:predict"):
        RestClient(f"http://127.0.0.1:{port}", NAME, signature, timeout=5).predict([{"I1": 1.0}])
    with GrpcClient(f"127.0.0.1:{port}", NAME, signature, timeout=5) as client:
        with pytest.raises(ServerUnreachable, match=f"127.0.0.1:{port}"):
            client.predict([{"I1": 1.0}])


def test_client_values_match_training_conversion():
    # kzoo.data.conform turns a missing category into "" and 260.0 into "260"; ids missing -> -1.
    cols = columns([{"x": None, "c": 260.0, "i": 7.0}, {"x": "2.5", "c": float("nan"), "i": None}],
                   {"x": "float32", "c": "string", "i": "int64"})
    np.testing.assert_array_equal(cols["x"], np.array([np.nan, 2.5], np.float32))
    assert cols["c"].tolist() == ["260", ""]
    assert cols["i"].tolist() == [7, -1] and cols["i"].dtype == np.int64
    with pytest.raises(ValueError, match="'i', row 1: 7.5 is not a whole number"):
        columns([{"i": 7.5}], {"i": "int64"})
