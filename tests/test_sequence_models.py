"""Sequence models end to end: `kzoo train` on the real loaders, and a served raw history through TF
Serving's protocol (a real PredictRequest), with long, empty, unseen and wrongly typed histories."""

import json

import grpc
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_service_pb2_grpc

import kzoo
from kzoo import data as kdata
from kzoo.cli import main
from kzoo.serving.client import GrpcClient, RestClient, load_signature
from kzoo.serving.requests import grpc_request
from kzoo.serving.testing_server import serve
from tests.real_data import amazon_slice, movielens_slice
from tests.tf_only import serve_fresh

# One worker runs this module: its module-scoped fixture trains and exports once (tests/run_all.sh
# runs pytest-xdist with --dist loadgroup), not once per worker.
pytestmark = pytest.mark.xdist_group("sequence_models")

HISTORY = ("hist_item_id", "hist_item_cat", "hist_gap")


@pytest.fixture(scope="module")
def din_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("din")
    folder = movielens_slice(tmp / "ml", users=25)
    kzoo.train("din", f"movielens:{folder}", tmp / "run", epochs=1, batch_size=256, verbose=0)
    version = kzoo.export(tmp / "run", tmp / "exports")
    spec = kzoo.load_spec(tmp / "run" / "spec.json")
    test = kzoo.pipeline.split_frames(spec, kdata.load(f"movielens:{folder}", spec.dataset)[0])[2]
    return tmp / "run", version, test.iloc[:8].reset_index(drop=True)


def _edge_rows(test: pd.DataFrame) -> pd.DataFrame:
    """Row 0: a history of 80 items (max_len is 50); row 1: an empty history; row 2: items never seen."""
    rows = test.copy()
    rows.loc[0, "hist_item_id"] = "|".join(str(i) for i in range(1, 81))
    rows.loc[0, "hist_item_cat"] = "|".join(["Drama"] * 80)
    rows.loc[0, "hist_gap"] = "|".join(["3"] * 80)
    for c in HISTORY:
        rows.loc[1, c] = ""
    rows.loc[2, "hist_item_id"] = "99999|88888"
    rows.loc[2, "hist_item_cat"] = "Drama|Drama"
    rows.loc[2, "hist_gap"] = "1|1"
    return rows


def test_served_history_matches_the_run_in_a_fresh_tensorflow_process(din_run, tmp_path):
    run, version, test = din_run
    rows = _edge_rows(test)
    expected = kzoo.predict(run, rows)["ctr"].to_numpy()
    served = serve_fresh(version, rows, tmp_path)
    assert served["dtypes"]["hist_item_id"] == "string"
    np.testing.assert_allclose(served["outputs"]["ctr"], expected, atol=1e-5)
    assert np.isfinite(expected).all()
    # A history longer than max_len is its most recent 50 items: the same score as that cut.
    cut = rows.iloc[[0]].copy()
    for c in HISTORY:
        cut[c] = cut[c].str.split("|").map(lambda xs: "|".join(xs[-50:]))
    assert kzoo.predict(run, cut)["ctr"].iloc[0] == pytest.approx(expected[0], abs=1e-6)
    assert kzoo.predict(run, rows.iloc[[0]].assign(hist_item_id="|".join(str(i) for i in range(1, 51)),
                                                   hist_item_cat="|".join(["Drama"] * 50),
                                                   hist_gap="|".join(["3"] * 50)))["ctr"].iloc[0] != \
        pytest.approx(expected[0], abs=1e-6)  # the first 50 are not the same history


def test_grpc_and_rest_predict_take_a_history_as_a_list_or_a_joined_string(din_run):
    run, version, test = din_run
    rows = _edge_rows(test)
    direct = kzoo.predict(run, rows)["ctr"].to_numpy()
    records = rows.to_dict("records")
    for r in records:  # a client may send a history as a list of ids
        r["hist_item_id"] = r["hist_item_id"].split("|") if r["hist_item_id"] else []
    signature = load_signature(version)
    request = grpc_request(records, signature.inputs, model_name="kzoo")
    assert request.inputs["hist_item_id"].dtype == tf.string.as_datatype_enum
    assert request.inputs["hist_item_id"].string_val[2] == b"99999|88888"
    with serve(version.parent, "kzoo") as server:
        with grpc.insecure_channel(server.grpc_target) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            response = stub.Predict(request, timeout=60)
            got = tf.make_ndarray(response.outputs["ctr"]).reshape(-1)
            np.testing.assert_allclose(got, direct, atol=1e-5)
            # A history sent as an int64 tensor against the string input: rejected, as TF Serving words it.
            bad = grpc_request(records, signature.inputs, model_name="kzoo")
            bad.inputs["hist_item_id"].CopyFrom(tf.make_tensor_proto(np.arange(len(records), dtype=np.int64)))
            with pytest.raises(grpc.RpcError) as err:
                stub.Predict(bad, timeout=60)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "to be string but int64 is provided" in err.value.details()
        for columnar in (False, True):
            rest = RestClient(server.rest_url, "kzoo", version).predict(records, columnar=columnar)
            np.testing.assert_allclose(np.asarray(rest["ctr"]).reshape(-1), direct, atol=1e-5)
        with GrpcClient(server.grpc_target, "kzoo", version) as client:
            np.testing.assert_allclose(client.predict(records)["ctr"].reshape(-1), direct, atol=1e-5)


def test_metrics_report_gauc_and_the_history_oov_count(din_run):
    run, _, _ = din_run
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0 < metrics["ctr"]["gauc"] < 1 and metrics["ctr"]["examples"] == 25 * 5
    seqs = metrics["sequences"]["test"]["hist_item_id"]
    assert seqs["rows"] == 125 and seqs["oov_items"] <= seqs["items"]


def test_cli_trains_a_sequence_model_on_amazon_data(tmp_path, capsys):
    path = amazon_slice(tmp_path / "amazon", "Beauty", users=150)
    run = tmp_path / "run"
    code = main(["train", "bst", "--data", f"amazon:{path}", "--out", str(run), "--epochs", "1"])
    assert code == 0, capsys.readouterr().err
    spec = json.loads((run / "spec.json").read_text())
    assert spec["features"]["name"] == "amazon"
    metrics = json.loads((run / "metrics.json").read_text())
    # 150 users, each with its last item and one sampled negative as the test rows.
    assert metrics["ctr"]["examples"] == 300 and "gauc" in metrics["ctr"]
