"""kzoo: a Keras 3 recommender model zoo.

    kzoo.load_spec(path)          -> Spec (checked; SpecError names JSON paths)
    kzoo.build(spec)              -> keras.Model you can compile and fit yourself
    kzoo.train(spec, data, out)   -> run dir with model.keras, metrics.json, history.csv, curves.png
    kzoo.export(run, base)        -> BASE/VERSION SavedModel for TF Serving

Heavy modules load on first call, so `import kzoo.metrics` and `kzoo --help` stay fast.
"""

__version__ = "0.1.0"


def load_spec(spec, base_dir=None):
    from kzoo.spec import load_spec as _load_spec

    return _load_spec(spec, base_dir)


def build(spec, stats=None):
    from kzoo.graph import build as _build

    return _build(spec, stats)


def train(spec, data="synthetic", out=None, **kwargs):
    from kzoo.trainer import train as _train

    return _train(spec, data, out, **kwargs)


def evaluate(run, data=None):
    from kzoo.trainer import evaluate as _evaluate

    return _evaluate(run, data)


def export(run, base, version=None):
    from kzoo.exporter import export as _export

    return _export(run, base, version)
