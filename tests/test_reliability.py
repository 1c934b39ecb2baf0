"""Holes a new user falls into (issue 13), each refused with the column/row or JSON path named:
non-finite numbers, labels a binary task cannot learn from, cut-off CSV lines, empty files, a loss
that becomes NaN, a misspelt activation."""

import gc
import json

import keras
import numpy as np
import pytest

import kzoo
from kzoo import data as kdata
from kzoo.errors import DataError, SpecError, TrainingDiverged


@pytest.fixture(scope="module")
def frame():
    return kdata.synthetic(300, seed=3)


@pytest.mark.parametrize("value", [np.inf, -np.inf, 1e39, "inf"])
def test_a_non_finite_number_is_refused_naming_column_and_row(frame, value, tmp_path):
    bad = frame.astype({"I3": object}).copy()
    bad.loc[7, "I3"] = value
    with pytest.raises(DataError, match=r"column 'I3', row 8: .* is not a finite float32 number \(1 row in all\)"):
        kzoo.train("lr", bad, tmp_path / "run", epochs=1, verbose=0)
    assert not (tmp_path / "run" / "preprocessing.json").exists()  # nothing half-written with "Infinity"
    with pytest.raises(DataError, match=r"column 'I3', row 8"):
        kdata.conform(bad.drop(columns=["label"]), kdata.bundled_dataset("criteo"), require_label=False)


@pytest.mark.parametrize("label, row", [(2, 10), (-1, 4), (0.5, 1)])
def test_a_binary_label_that_is_not_0_or_1_is_refused(frame, tmp_path, label, row):
    bad = frame.copy()
    bad.loc[row - 1, "label"] = label
    bad.loc[row + 5, "label"] = label
    with pytest.raises(DataError, match=rf"column 'label', row {row}: label {label:g} is not 0 or 1, as binary task "
                                        r"'ctr' needs \(2 rows in all\)"):
        kzoo.train("lr", bad, tmp_path / "run", epochs=1, verbose=0)


def test_evaluate_on_bad_labels_is_the_same_clear_error(frame, tmp_path):
    kzoo.train("lr", frame, tmp_path / "run", epochs=1, verbose=0)
    bad = frame.copy()
    bad.loc[3, "label"] = 2
    bad.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(DataError, match=r"column 'label', row 4: label 2 is not 0 or 1"):
        kzoo.evaluate(tmp_path / "run", tmp_path / "bad.csv")


def test_a_distilled_task_takes_probabilities_but_not_beyond_them():
    from kzoo.loaders_mtmd import mtmd_synthetic
    from kzoo.pipeline import conform_for

    spec = kzoo.load_spec("mtmd")
    frame = mtmd_synthetic(50)
    assert ((frame["teacher_ctr"] > 0) & (frame["teacher_ctr"] < 1)).all()
    conform_for(spec, frame)  # soft labels in (0, 1) are what a `kl` task learns from
    frame.loc[11, "teacher_ctr"] = 1.5
    with pytest.raises(DataError, match=r"column 'teacher_ctr', row 12: label 1.5 is not a probability in \[0, 1\]"):
        conform_for(spec, frame)


def test_a_cut_off_csv_line_is_refused_and_an_empty_last_field_is_not(frame, tmp_path):
    frame.to_csv(tmp_path / "ok.csv", index=False)
    lines = (tmp_path / "ok.csv").read_text().splitlines()
    fields = lines[6].split(",")
    lines[6] = ",".join(fields[:-1] + [""])  # the last value missing, its separator kept: valid
    (tmp_path / "empty_last.csv").write_text("\n".join(lines) + "\n")
    loaded = kdata.load(tmp_path / "empty_last.csv")[0]
    assert len(loaded) == len(frame) and loaded["C26"].isna().iloc[5]  # data row 6 (the header is line 0)
    lines[9] = ",".join(lines[9].split(",")[:-3])  # three fields cut off
    (tmp_path / "cut.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"cut.csv, row 9: 37 fields where the file has 40 columns"):
        kdata.load(tmp_path / "cut.csv")


def test_an_empty_data_file_and_an_empty_spec_say_so(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="empty.csv: the file is empty"):
        kdata.load(tmp_path / "empty.csv")
    (tmp_path / "spec.json").write_text("\n  \n")
    with pytest.raises(SpecError, match=r"\(file\): the spec is empty"):
        kzoo.load_spec(tmp_path / "spec.json")


def test_a_misspelt_activation_is_named_at_its_argument():
    raw = json.loads(kzoo.load_spec("dcn_v2").to_json())
    i = next(i for i, b in enumerate(raw["blocks"]) if b["type"] == "MLP")
    raw["blocks"][i]["args"]["activation"] = "rleu"
    with pytest.raises(SpecError, match=rf"blocks\[{i}\].args.activation: MLP '\w+': unknown activation 'rleu' "
                                        r"\(did you mean 'relu'\?\)"):
        kzoo.build(kzoo.load_spec(raw))


def test_a_loss_that_becomes_nan_stops_training_naming_the_step(frame, tmp_path):
    raw = json.loads(kzoo.load_spec("lr").to_json())
    raw["train"]["optimizer"] = {"type": "sgd", "learning_rate": 1e38}
    with pytest.raises(TrainingDiverged, match=r"the loss is (nan|inf) at epoch 1, step \d+; lower "
                                               r"train.optimizer.learning_rate \(learning rate 1e\+38\)"):
        kzoo.train(raw, frame, tmp_path / "run", epochs=2, batch_size=32, verbose=0)
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_a_model_file_holding_python_code_is_refused_not_run(tmp_path):
    import keras

    ran = []
    inp = keras.Input((3,))
    model = keras.Model(inp, keras.layers.Lambda(lambda x: ran.append(1) or x * 2)(inp))
    ran.clear()  # building the model called it once
    model.save(tmp_path / "lambda.keras")
    (tmp_path / "run").mkdir()
    (tmp_path / "lambda.keras").rename(tmp_path / "run" / "model.keras")
    with pytest.raises(DataError, match=r"model.keras: this model file holds Python code .* which kzoo never loads"):
        kzoo.load_model(tmp_path / "run")
    assert not ran


@pytest.mark.parametrize("ref", ["/etc/criteo.json", "../criteo.json", "sub/../../criteo.json"])
def test_a_ref_outside_the_specs_folder_is_refused(tmp_path, ref):
    outside = tmp_path / "criteo.json"
    outside.write_text(json.dumps(kdata.bundled_dataset("criteo")))
    folder = tmp_path / "specs"
    (folder / "sub").mkdir(parents=True)
    raw = json.loads(kzoo.load_spec("lr").to_json())
    raw["features"] = {"$ref": ref}
    (folder / "spec.json").write_text(json.dumps(raw))
    with pytest.raises(SpecError, match=r"features.\$ref: .* points outside the spec's folder"):
        kzoo.load_spec(folder / "spec.json")
    raw["features"] = {"$ref": "criteo.json"}  # beside the spec: read
    (folder / "criteo.json").write_text(outside.read_text())
    (folder / "spec.json").write_text(json.dumps(raw))
    assert kzoo.load_spec(folder / "spec.json").dataset["name"] == "criteo"


def test_a_test_split_with_one_class_reports_null_auc_and_keeps_the_run(frame, tmp_path):
    rare = frame.assign(label=0.0)
    rare.loc[[3, 50], "label"] = 1.0  # positives only in the training split (the split is seeded)
    with pytest.warns(UserWarning, match=r"AUC and the calibration slope are undefined on \d+ rows with one class"):
        metrics = kzoo.train("lr", rare, tmp_path / "run", epochs=1, verbose=0)
    report = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert report["ctr"]["auc"] is None and report["ctr"]["calibration_slope"] is None
    assert report["ctr"]["mean_label"] == 0.0 and report["ctr"]["logloss"] == pytest.approx(metrics["ctr"]["logloss"])
    assert (tmp_path / "run" / "model.keras").is_file()


def test_sizes_that_cannot_be_allocated_are_spec_errors_not_allocations():
    raw = json.loads(kzoo.load_spec("dcn_v2").to_json())
    mlp = next(i for i, b in enumerate(raw["blocks"]) if b["type"] == "MLP")
    wide = json.loads(json.dumps(raw))
    wide["blocks"][mlp]["args"]["units"] = [256, 10**9]
    with pytest.raises(SpecError, match=rf"blocks\[{mlp}\].args.units\[1\]: .*65536"):
        kzoo.build(kzoo.load_spec(wide))
    emb = next(i for i, b in enumerate(raw["blocks"]) if b["type"] == "FeatureEmbedding")
    feature = next(f for f in raw["features"]["features"] if f["type"] == "categorical")
    feature.pop("vocab", None)
    feature["hash_buckets"] = 10**12
    with pytest.raises(SpecError, match=rf"blocks\[{emb}\].args: FeatureEmbedding '\w+': its tables would hold "
                                        r"1,000,000,[\d,]+ rows x 16 = .* GiB, more than this machine.s"):
        kzoo.build(kzoo.load_spec(raw))


# ------------------------------------------------------------------------------------ export faults

def _export_cli(run, base):
    import os
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, "-m", "kzoo.cli", "export", str(run), "--out", str(base)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})


@pytest.fixture(scope="module")
def lr_run(frame, tmp_path_factory):
    run = tmp_path_factory.mktemp("lr") / "run"
    kzoo.train("lr", frame, run, epochs=1, verbose=0)
    return run


def test_two_exports_racing_to_one_base_get_distinct_whole_versions(lr_run, tmp_path):
    from tests.tf_only import serve_fresh_many

    base = tmp_path / "exports" / "lr"
    racers = [_export_cli(lr_run, base) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in racers]
    assert [p.returncode for p in racers] == [0, 0], outs
    assert sorted(p.name for p in base.iterdir()) == ["1", "2"]  # no reservation or temporary folder left
    rows = kdata.conform(kdata.synthetic(8, seed=9), kdata.bundled_dataset("criteo"))
    one, two = serve_fresh_many([base / "1", base / "2"], rows, tmp_path)
    expected = kzoo.predict(lr_run, rows)["ctr"].to_numpy()
    np.testing.assert_allclose(one["outputs"]["ctr"], expected, atol=1e-5)
    np.testing.assert_allclose(two["outputs"]["ctr"], expected, atol=1e-5)


def test_an_export_killed_midway_leaves_no_version_and_the_next_one_succeeds(lr_run, tmp_path):
    import signal
    import time

    base = tmp_path / "exports" / "lr"
    victim = _export_cli(lr_run, base)
    deadline = time.time() + 120
    while time.time() < deadline and not any(base.glob(".tmp-*")):
        time.sleep(0.005)
    assert any(base.glob(".tmp-*")), "the export never started writing"
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert not [p for p in base.iterdir() if p.name.isdigit()]  # nothing TF Serving would load
    again = _export_cli(lr_run, base)
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    # The killed export's reservation and half-written folder are cleaned up; its number is reused.
    assert sorted(p.name for p in base.iterdir()) == ["1"]
    assert (base / "1" / "saved_model.pb").is_file()


class EpochGarbage(keras.callbacks.Callback):
    """The objects Python's cycle collector finds between the end of one `fit` (one epoch of
    kzoo.train) and the end of the next: everything an epoch leaves in reference cycles, the next
    epoch's dataset and the checkpoints saved in it included."""

    def __init__(self):
        super().__init__()
        self.per_epoch, self.fits = [], 0

    def on_train_end(self, logs=None):
        self.fits += 1
        if self.fits > 1:  # the first epoch builds what the run keeps
            gc.collect()
            self.per_epoch.append([type(o).__name__ for o in gc.garbage])
            gc.garbage.clear()
        gc.collect()
        gc.set_debug(gc.DEBUG_SAVEALL)


def test_an_epoch_of_a_streamed_run_leaves_no_cyclic_garbage_behind(frame, tmp_path):
    """Long runs (docs/reliability.md): each epoch built its own tf.data pipeline, and tf.data traced
    the preprocessing again, leaving five graphs (~4,000 objects in reference cycles) per epoch; and
    Keras' `save_weights` built a throwaway `Layer()` per saved layer (its skip-set cache is stored
    under one key and read under another), ~2,900 more per FM checkpoint. Only Python's rare full
    collections freed them, and the soak's memory crept up between those."""
    shards = tmp_path / "shards"
    shards.mkdir()
    for k in range(2):
        frame.iloc[k::2].to_parquet(shards / f"part-{k}.parquet", index=False)
    probe = EpochGarbage()
    try:
        kzoo.train("fm", str(shards), tmp_path / "run", epochs=4, batch_size=32, verbose=0, callbacks=[probe])
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert len(probe.per_epoch) == 3
    for kinds in probe.per_epoch:
        assert "FuncGraph" not in kinds and "Layer" not in kinds, sorted(set(kinds))
        assert len(kinds) < 100, f"{len(kinds)} objects left in reference cycles by one epoch"


def test_a_checkpoint_save_leaves_no_cyclic_garbage_behind(tmp_path):
    """Long runs (docs/reliability.md): Keras' `save_weights` built a throwaway `Layer()` per saved layer
    (its skip-set cache is stored under one key and read under another), ~2,900 objects in reference
    cycles per FM checkpoint that only a full collection frees; the soak's memory crept up with them."""
    from kzoo.checkpoint import StepCheckpoint

    data = kzoo.prepare("fm", "synthetic:300", 64)
    model = kzoo.build(data.spec, data.stats)
    kzoo.compile(model, data.spec)
    model.fit(data.train, epochs=1, verbose=0)  # the optimizer's state exists, as in a run
    checkpoint = StepCheckpoint(tmp_path / "backup", 100)
    checkpoint.set_model(model)
    checkpoint.save()
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for _ in range(3):
            checkpoint.save()
        gc.collect()
        garbage = list(gc.garbage)
    finally:
        gc.garbage.clear()
        gc.set_debug(0)
    layers = [o for o in garbage if isinstance(o, keras.layers.Layer)]
    assert not layers, f"{len(layers)} layers left as cyclic garbage by 3 checkpoint saves"
    assert len(garbage) < 100, f"{len(garbage)} objects left as cyclic garbage by 3 checkpoint saves"
    assert (tmp_path / "backup" / "latest").is_file()
