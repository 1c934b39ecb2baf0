"""kzoo installs like a package: a built wheel, used from another folder, and the README's Python example."""

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel_install(tmp_path_factory):
    """The wheel `pip install .` would install, unpacked into its own folder (the venv's other
    packages serve as its dependencies; nothing of the repository is importable from there)."""
    tmp = tmp_path_factory.mktemp("wheel")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp / "dist"), str(REPO)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    (wheel,) = (tmp / "dist").glob("kzoo-*.whl")
    target = tmp / "site"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(target)
        names = z.namelist()
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    return target, names, elsewhere


def run_installed(target: Path, cwd: Path, *args):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(target)
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, env=env)


def test_wheel_holds_one_kzoo_namespace_with_blocks_serving_and_the_zoo(wheel_install):
    _, names, _ = wheel_install
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert tops == {"kzoo"}, tops  # no top-level `blocks` or `serving` to clash with other installs
    for needed in ("kzoo/blocks/core.py", "kzoo/blocks/backend/tensorflow.py", "kzoo/serving/client.py",
                   "kzoo/zoo_configs/dcn_v2.json", "kzoo/schema.json", "kzoo/datasets/criteo.json"):
        assert needed in names, needed
    zoo = {Path(n).stem for n in names if n.startswith("kzoo/zoo_configs/") and n.endswith(".json")}
    assert zoo == {p.stem for p in (REPO / "zoo_configs").glob("*.json")}


def test_installed_kzoo_lists_the_zoo_from_another_folder(wheel_install):
    target, _, elsewhere = wheel_install
    done = run_installed(target, elsewhere, "-c", "import kzoo, kzoo.blocks, kzoo.serving.client; "
                         "print(kzoo.__file__); print(kzoo.blocks.__file__); print(kzoo.serving.client.__file__)")
    assert done.returncode == 0, done.stderr[-3000:]
    assert all(line.startswith(str(target)) for line in done.stdout.split()), done.stdout
    listed = run_installed(target, elsewhere, "-m", "kzoo.cli", "list")
    assert listed.returncode == 0, listed.stderr[-3000:]
    for path in (REPO / "zoo_configs").glob("*.json"):
        assert re.search(rf"^  {path.stem} ", listed.stdout, re.M), path.stem
    assert listed.stderr == "", listed.stderr  # no TensorFlow start-up noise


def test_installed_kzoo_trains_a_zoo_model_by_name_and_load_model_needs_only_import_kzoo(wheel_install):
    target, _, elsewhere = wheel_install
    done = run_installed(target, elsewhere, "-m", "kzoo.cli", "train", "dcn_v2", "--data", "synthetic:1000",
                         "--epochs", "1", "--out", "runs/dcn_v2")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (elsewhere / "runs" / "dcn_v2" / "model.keras").is_file()
    # A fresh process: `import kzoo` alone registers the blocks for Keras' loader.
    code = ("import kzoo, keras; m = keras.models.load_model('runs/dcn_v2/model.keras'); "
            "n = kzoo.load_model('runs/dcn_v2'); print(type(m.get_layer('cross')).__module__, "
            "m.count_params() == n.count_params())")
    loaded = run_installed(target, elsewhere, "-c", code)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert loaded.stdout.split() == ["kzoo.blocks.interaction", "True"], loaded.stdout


def readme_python_example() -> str:
    text = (REPO / "README.md").read_text()
    section = text[text.index("## From Python"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_python_example_runs_as_written(tmp_path):
    code = readme_python_example()
    assert "kzoo.prepare(" in code and "model.fit(" in code and "kzoo.train(" in code
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "runs" / "deepfm" / "metrics.json").is_file()
    assert list((tmp_path / "exports" / "deepfm").glob("1/saved_model.pb"))


def test_public_functions_keep_their_docstrings():
    import kzoo

    for name in ("load_spec", "prepare", "build", "compile", "serving_model", "train", "evaluate", "predict",
                 "export", "load_model"):
        doc = getattr(kzoo, name).__doc__
        assert doc and len(doc.strip()) > 40, name
    assert "preprocessed" in kzoo.build.__doc__ and "logit" in kzoo.build.__doc__


def test_readme_and_serving_doc_name_the_same_export_base():
    readme = (REPO / "README.md").read_text()
    serving = (REPO / "docs" / "serving.md").read_text()
    (base,) = set(re.findall(r"--export (exports\S*)", readme))
    mounts = set(re.findall(r'-v "\$PWD/(\S+):/models/kzoo"', readme + serving))
    assert mounts == {base}, (base, mounts)
    assert set(re.findall(r"--model_base_path=/abs/path/to/(\S+)", serving)) == {base}
