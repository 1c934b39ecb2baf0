"""The bad-data matrix (issue 13, docs/reliability.md): each bad input at training, at `kzoo predict`
(a run and an export) and at the served signature (TF Serving's PredictRequest through the
protocol-true server's checks), handled as documented or refused naming the column / input and the
row; and an export whose warmup would fail is never published.

One small model reads every raw dtype a signature has: a float32 number, a vocabulary string, a
bounded int64 id, a hashed string and a `tags` list (max_len 3)."""

import json
import re
import shutil

import grpc
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

import kzoo
from kzoo import data as kdata
from kzoo.cli import main
from kzoo.errors import DataError
from kzoo.serving.requests import columns
from kzoo.serving.rest_json import ServingFailure, request_from_json
from kzoo.serving.testing_server import LoadedModel

# One worker runs this module: its module-scoped fixture trains and exports once (tests/run_all.sh
# runs pytest-xdist with --dist loadgroup), not once per worker.
pytestmark = pytest.mark.xdist_group("bad_data")

ITEMS = [f"i{k}" for k in range(12)]
SPEC = {"name": "shop", "features": {"name": "shop", "label": "label", "features": [
    {"name": "price", "type": "numeric", "fill": 0, "norm": "standard"},
    {"name": "city", "type": "categorical"},
    {"name": "slot", "type": "categorical", "max_id": 9},
    {"name": "site", "type": "categorical", "hash_buckets": 8},
    {"name": "hist", "type": "tags", "max_len": 3}]},
    "groups": {"all": ["*"]},
    "blocks": [{"name": "emb", "type": "FeatureEmbedding", "inputs": ["group:all"], "args": {"dim": 4}},
               {"name": "mlp", "type": "MLP", "inputs": ["emb"], "args": {"units": [8]}}],
    "tasks": [{"name": "ctr", "type": "binary", "input": "mlp"}],
    "train": {"optimizer": {"type": "adam", "learning_rate": 0.05}, "batch_size": 64, "epochs": 2}}


def rows(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "label": (rng.random(n) < 0.4).astype("float32"), "price": rng.normal(10, 3, n).astype("float32"),
        "city": rng.choice(["paris", "rome", "oslo", "lima"], n), "slot": rng.integers(0, 10, n).astype("int64"),
        "site": rng.choice(["a.com", "b.com", "c.com"], n),
        "hist": ["|".join(rng.choice(ITEMS, rng.integers(0, 6))) for _ in range(n)]})
    frame.loc[frame.index[:3], "hist"] = ["i1|i2|i3|i4|i5", "i4|i5", ""]  # long, short and empty histories
    return frame


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    """(tmp, run dir, export version dir) of the model above, trained on 300 rows of a Parquet file."""
    tmp = tmp_path_factory.mktemp("bad_data")
    rows(300, 0).to_parquet(tmp / "rows.parquet")
    (tmp / "spec.json").write_text(json.dumps(SPEC))
    kzoo.train(tmp / "spec.json", tmp / "rows.parquet", tmp / "run", verbose=0)
    return tmp, tmp / "run", kzoo.export(tmp / "run", tmp / "exports")


@pytest.fixture(scope="module")
def served(shop):
    """The export loaded as TF Serving loads a version (testing_server: its checks, its messages)."""
    version = shop[2]
    return LoadedModel(version.parent, "kzoo")


def cli_error(capsys, *argv) -> str:
    """`kzoo ARGV` run in-process: exit status 2 and one line `kzoo: error: ...`, no traceback."""
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("kzoo: error: ") and len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


# ------------------------------------------------------------------------------------------ training

def test_training_gaps_header_only_float_ids_and_non_utf8_name_the_file_row(shop, tmp_path):
    tmp, _, _ = shop
    base = rows(60, 1)
    base.iloc[:0].to_csv(tmp_path / "header_only.csv", index=False)
    with pytest.raises(DataError, match=r"split: 0 rows are too few"):
        kzoo.train(tmp / "spec.json", tmp_path / "header_only.csv", tmp_path / "r1", verbose=0)
    # A fractional bounded id is refused naming the file's row (the seeded split used to name a split's row).
    bad = base.astype({"slot": object})
    bad.loc[40, "slot"] = 2.5
    bad.to_csv(tmp_path / "float_id.csv", index=False)
    with pytest.raises(DataError, match=r"column 'slot', row 41: '2.5' is not a whole number \(int64 id\)"):
        kzoo.train(tmp / "spec.json", tmp_path / "float_id.csv", tmp_path / "r2", verbose=0)
    text = base.to_csv(index=False).encode()
    line = text.split(b"\n")[12]  # data row 12
    (tmp_path / "latin1.csv").write_bytes(text.replace(line, line.replace(b",rome,", b",r\xf4me,").replace(
        b",paris,", b",par\xefs,").replace(b",oslo,", b",\xf8slo,").replace(b",lima,", b",l\xedma,"), 1))
    with pytest.raises(DataError, match=r"latin1.csv, row 12, column 'city': b'\\x.." r".*' is not UTF-8; save the file as UTF-8"):
        kzoo.train(tmp / "spec.json", tmp_path / "latin1.csv", tmp_path / "r3", verbose=0)
    assert not (tmp_path / "r1" / "model.keras").exists() and not (tmp_path / "r3" / "model.keras").exists()


def test_training_keeps_what_it_reads_extra_columns_empty_strings_and_long_histories():
    from kzoo.features import Preprocessor, fit_stats

    dataset = SPEC["features"]
    frame = rows(40, 2).assign(extra=7, notes="x").astype({"hist": object})
    frame.loc[5, "city"] = ""
    frame.loc[6, "city"] = None
    frame.at[7, "hist"] = ["i1", "i2", "i3", "i4"]  # a list cell (Parquet list<string>), longer than max_len
    frame.loc[8, "hist"] = "i9|i8|i7|i6|i5"
    conformed = kdata.conform(frame, dataset)
    assert list(conformed.columns) == ["label", "price", "city", "slot", "site", "hist"]  # extras ignored
    assert conformed["city"].iloc[5] == conformed["city"].iloc[6] == ""  # empty and missing: one category
    stats = fit_stats(dataset["features"], conformed)
    assert "" in stats["city"]["vocab"]  # learned like any other value
    pre = Preprocessor(dataset["features"], stats, ["hist"])
    ids = np.asarray(pre({"hist": tf.constant(conformed["hist"].iloc[[7, 8]].tolist())})["hist"])
    vocab = stats["hist"]["vocab"]
    expected = [[vocab.index(i) + 1 for i in ["i2", "i3", "i4"]], [vocab.index(i) + 1 for i in ["i7", "i6", "i5"]]]
    np.testing.assert_array_equal(ids, expected)  # the last max_len items, oldest first; id 0 is OOV


# ------------------------------------------------------------------------------------------ kzoo predict

def variants(base: pd.DataFrame) -> tuple[pd.DataFrame, list[tuple[str, int, int]]]:
    """Rows to predict: the base rows, then per handled case a copy of one base row with one value
    changed to another that must predict the same: (case, the copy's row, the base row)."""
    out, pairs = [base], []

    def add(case, i, **values):
        row = base.iloc[[i]].copy()
        for k, v in values.items():
            row[k] = pd.Series([v], index=row.index, dtype=object)
        pairs.append((case, sum(map(len, out)), i))
        out.append(row)

    add("NaN is filled with the fill value (0)", 11, price=None)
    add("an unseen category is OOV", 10, city="atlantis")
    add("an empty category is one value, here unseen", 10, city="")
    add("a history is cut to its last 3 items", 3, hist="i9|i8|" + base["hist"].iloc[3])
    add("a whole float id", 4, slot=f"{base['slot'].iloc[4]}.0")
    add("out-of-range ids share one id", 9, slot=99)
    add("a label not 0/1 is not read", 6, label=7)
    add("a missing label is not read", 7, label=None)
    add("(not vacuous) a known category", 10, city="paris")
    return pd.concat(out, ignore_index=True), pairs


def predict_base() -> pd.DataFrame:
    base = rows(12, 5).astype({"slot": object, "label": object, "price": object})
    base.loc[3, "hist"] = "i1|i2|i3"
    base.loc[11, "price"] = 0.0  # the fill value
    base.loc[10, "city"] = "nowhere"  # unseen in training
    base.loc[9, "slot"] = -4  # out of range
    return base


@pytest.mark.parametrize("target", ["run", "export"])
def test_predict_handles_each_case_as_documented(shop, tmp_path, target):
    tmp, run, version = shop
    frame, pairs = variants(predict_base())
    frame.assign(extra_column="x").to_csv(tmp_path / "rows.csv", index=False)
    got = kzoo.predict(run if target == "run" else version, tmp_path / "rows.csv")["ctr"].to_numpy()
    assert np.isfinite(got).all() and len(got) == len(frame)
    for case, i, j in pairs[:-1]:
        assert got[i] == pytest.approx(got[j], abs=1e-6), case
    _, i, j = pairs[-1]
    assert abs(got[i] - got[j]) > 1e-4  # a known city is not OOV: the equalities above can fail
    frame.iloc[:0].to_csv(tmp_path / "header.csv", index=False)
    empty = kzoo.predict(run if target == "run" else version, tmp_path / "header.csv")
    assert list(empty.columns) == ["ctr"] and len(empty) == 0


@pytest.mark.parametrize("case, change, message", [
    ("missing column", lambda f: f.drop(columns=["city"]), r"expects column 'city', not in the data"),
    ("text in a numeric column", lambda f: f.assign(price=["1.5", "abc"] + ["2"] * (len(f) - 2)),
     r"column 'price', row 2: 'abc' is not a number"),
    ("inf", lambda f: f.assign(price=["1"] * 4 + ["-inf"] + ["2"] * (len(f) - 5)),
     r"column 'price', row 5: '-inf' is not a finite float32 number"),
    ("float id", lambda f: f.assign(slot=["3"] * 6 + ["3.5"] + ["1"] * (len(f) - 7)),
     r"column 'slot', row 7: '3.5' is not a whole number \(int64 id\)"),
    ("broken list", lambda f: f.assign(hist=["[1, 2"] + ["i1"] * (len(f) - 1)), r"column 'hist', row 1: '\[1, 2' opens a list"),
])
def test_predict_refuses_bad_data_in_one_line_naming_column_and_row(shop, tmp_path, capsys, case, change, message):
    _, run, version = shop
    change(predict_base()).to_csv(tmp_path / "bad.csv", index=False)
    for target in (run, version):
        err = cli_error(capsys, "predict", target, "--data", tmp_path / "bad.csv")
        assert re.search(message, err), (case, err)


def test_predict_refuses_an_empty_and_a_non_utf8_file(shop, tmp_path, capsys):
    _, run, version = shop
    (tmp_path / "empty.csv").write_text("")
    frame = predict_base()
    frame["city"] = ["rome", "paris"] * (len(frame) // 2)
    (tmp_path / "latin1.csv").write_bytes(frame.to_csv(index=False).encode().replace(b",paris,", b",par\xefs,", 1))
    for target in (run, version):
        assert "empty.csv: the file is empty" in cli_error(capsys, "predict", target, "--data", tmp_path / "empty.csv")
        assert "latin1.csv, row 2, column 'city': b'\\xef" in cli_error(capsys, "predict", target, "--data",
                                                                       tmp_path / "latin1.csv")


# ------------------------------------------------------------------------------------------ the signature

GOOD = {"price": [9.5, 11.0], "city": ["paris", "nowhere"], "slot": [3, 4], "site": ["a.com", "b.com"],
        "hist": ["i1|i2|i3", "i4"]}
DTYPES = {"price": tf.float32, "city": tf.string, "slot": tf.int64, "site": tf.string, "hist": tf.string}


def request(inputs: dict, dtypes: dict | None = None):
    """A PredictRequest of raw tensors as a client sends them: no cleaning, the given dtypes."""
    from tensorflow_serving.apis import predict_pb2

    req = predict_pb2.PredictRequest()
    req.model_spec.name = "kzoo"
    for name, values in inputs.items():
        req.inputs[name].CopyFrom(tf.make_tensor_proto(values, dtype=(dtypes or {}).get(name, DTYPES.get(name))))
    return req


def serve(served, **changes) -> np.ndarray:
    response = served.predict(request({**GOOD, **changes}))
    return tf.make_ndarray(response.outputs["ctr"])


def refused(served, req, *, dtypes=None) -> str:
    with pytest.raises(ServingFailure) as err:
        served.predict(req if not isinstance(req, dict) else request(req, dtypes))
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    return err.value.message


def test_signature_declares_float32_string_and_int64_inputs(served):
    sig = served.signature_defs["serving_default"]
    assert {k: tf.as_dtype(v.dtype).name for k, v in sig.inputs.items()} == \
        {"price": "float32", "city": "string", "slot": "int64", "site": "string", "hist": "string"}


def test_signature_handles_missing_unseen_empty_non_utf8_and_long_values(served):
    good = serve(served)
    assert good.shape == (2,) and np.isfinite(good).all()
    # NaN: the missing value, filled as in training (fill 0).
    np.testing.assert_allclose(serve(served, price=[np.nan, 11.0]), serve(served, price=[0.0, 11.0]), atol=1e-7)
    # Unseen, empty and non-UTF-8 categories: the OOV id, like 'nowhere' (row 2 of GOOD).
    oov = serve(served, city=["nowhere", "nowhere"])
    for value in ["atlantis", "", b"\xff\xfe"]:
        np.testing.assert_allclose(serve(served, city=[value, "nowhere"]), oov, atol=1e-7, err_msg=repr(value))
    assert abs(oov[0] - good[0]) > 1e-4  # 'paris' (row 1 of GOOD) is known: the equalities above can fail
    # A history longer than max_len keeps its last 3 items; a non-UTF-8 item is OOV like an unseen one.
    np.testing.assert_allclose(serve(served, hist=["i7|i8|i1|i2|i3", "i4"]), good, atol=1e-7)
    np.testing.assert_allclose(serve(served, hist=[b"\xff|i2|i3", "i4"]), serve(served, hist=["zz|i2|i3", "i4"]),
                               atol=1e-7)
    # Bounded ids out of range (negative, past max_id) share the out-of-range id.
    np.testing.assert_allclose(serve(served, slot=[-5, 10**12]), serve(served, slot=[10, 10]), atol=1e-7)


def test_signature_serves_an_empty_batch(served):
    out = served.predict(request({k: np.array([], dtype=object if v == tf.string else v.as_numpy_dtype)
                                  for k, v in DTYPES.items()}))
    assert tf.make_ndarray(out.outputs["ctr"]).shape == (0,)


def test_signature_refuses_what_it_cannot_score_naming_the_input(served):
    # ±inf: refused by the guard in the graph (a saturated score otherwise), naming the input and row.
    for value in (np.inf, -np.inf):
        msg = refused(served, {**GOOD, "price": [1.0, value]})
        assert "[input] [price] [: +-inf at row index] [1] [(0-based); send NaN for a missing value" in msg
    # TF Serving's own checks (the testing server's copies of its messages).
    assert "Missing but required: {city}" in refused(served, {k: v for k, v in GOOD.items() if k != "city"})
    assert "Sent extra: {label}" in refused(served, {**GOOD, "label": [1.0, 2.0]}, dtypes={"label": tf.float32})
    assert "to be float but string is provided" in refused(served, {**GOOD, "price": ["1.5", "abc"]},
                                                            dtypes={"price": tf.string})
    assert "to be int64 but float is provided" in refused(served, {**GOOD, "slot": [2.5, 3.0]},
                                                           dtypes={"slot": tf.float32})
    assert "to be int64 but int32 is provided" in refused(served, {**GOOD, "slot": [2, 3]}, dtypes={"slot": tf.int32})
    assert "to be float but int64 is provided" in refused(served, {**GOOD, "price": [2, 3]}, dtypes={"price": tf.int64})
    # REST: text for a number is refused by the JSON parser.
    with pytest.raises(ServingFailure, match=r'JSON Value: "abc" Type: String is not of expected type: float'):
        request_from_json({"inputs": {**GOOD, "price": [1.5, "abc"]}}, served, "kzoo", None)
    # Ragged: a list per row (a 2-D tensor) and inputs of different lengths, named by the guard.
    assert "[input] [hist] [: one value per row expected (a vector; a sequence is one string of its items joined by " \
        "its separator), got] [4] [values for] [2] [rows]" in refused(served, {**GOOD, "hist": [["i1", "i2"], ["i3", ""]]})
    assert "[inputs have different numbers of rows: city has] [2] [and] [price] [3]" in \
        refused(served, {**GOOD, "price": [1.0, 2.0, 3.0]})


def test_kzoo_clients_send_what_the_signature_declares(served):
    """kzoo's request builder casts to the declared dtypes, joins a list per row into the items string,
    drops extra columns, and refuses a fractional id and non-UTF-8 bytes before anything is sent."""
    rows = [{**{k: v[i] for k, v in GOOD.items()}, "label": 3} for i in range(2)]
    rows[0]["hist"] = ["i1", "i2", "i3"]
    rows[1]["slot"] = 4.0
    sig = {k: v.name for k, v in DTYPES.items()}
    cols = columns(rows, sig)
    reply = served.predict(request({k: v.tolist() if v.dtype == object else v for k, v in cols.items()}))
    np.testing.assert_allclose(tf.make_ndarray(reply.outputs["ctr"]), serve(served), atol=1e-7)
    rows[1]["slot"] = 4.5
    with pytest.raises(DataError, match=r"column 'slot', row 2: 4.5 is not a whole number"):
        columns(rows, sig)
    rows[1]["slot"], rows[1]["city"] = 4, b"par\xefs"
    with pytest.raises(DataError, match=r"column 'city', row 2: b'par\\xefs' is not UTF-8 text"):
        columns(rows, sig)


# ------------------------------------------------------------------------------------------ export

def test_an_export_whose_warmup_fails_is_not_published(shop, tmp_path, capsys):
    """Damaged weights (NaN: a diverged run's file) make the warmup score non-finite: `kzoo export`
    refuses in one line and leaves no version, no temporary folder and no reservation."""
    import keras

    _, run, version = shop
    shutil.copytree(run, tmp_path / "run", ignore=shutil.ignore_patterns("backup"))
    model = kzoo.load_model(tmp_path / "run")
    dense = next(layer for layer in model.layers if layer.weights and isinstance(layer, keras.layers.Dense))
    dense.weights[0].assign(np.full(dense.weights[0].shape, np.nan, "float32"))
    model.save(tmp_path / "run" / "model.keras")
    base = tmp_path / "exports"
    err = cli_error(capsys, "export", tmp_path / "run", "--out", base)
    assert f"{base / '1'} not published" in err and "warmup" in err and "output ctr is not finite" in err, err
    assert list(base.iterdir()) == []


def test_a_warmup_request_the_model_refuses_stops_the_publication(shop, tmp_path):
    """replay_warmup on a written export whose warmup record sends a wrong dtype (as TF Serving would
    refuse to load it): WarmupFailed naming the record and TF Serving's message."""
    from tensorflow_serving.apis import prediction_log_pb2

    from kzoo.export_checks import WarmupFailed, replay_warmup

    folder = tmp_path / ".tmp-1-1"
    shutil.copytree(shop[2], folder)
    assert replay_warmup(folder, tmp_path / "1") == 3  # batch sizes 1, 8, 64 of real validation rows
    bad = request({**GOOD, "slot": [1.0, 2.0]}, dtypes={"slot": tf.float32})
    log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=bad))
    with tf.io.TFRecordWriter(str(folder / "assets.extra" / "tf_serving_warmup_requests")) as writer:
        writer.write(log.SerializeToString())
    with pytest.raises(WarmupFailed, match=r"1 not published: .*record 1: Expects arg\[\d\] to be int64 but float"):
        replay_warmup(folder, tmp_path / "1")
