"""Train FuxiCTR's DCNv2 or DeepFM on kzoo's own split and report test AUC, logloss and speed.

Runs INSIDE the peer venv (bench/peer/.venv, made by bench/peer/setup.sh); it imports no kzoo
module, so that venv needs neither TensorFlow nor JAX. Inputs are the already-split raw frames
that the kzoo side wrote (label + features; categoricals as text, numerics as floats, empty =
missing) and kzoo's dataset schema JSON (kzoo/datasets/criteo.json format).

What runs is FuxiCTR's: FeatureProcessor (read_data/preprocess/fit/transform), its data loaders
(NpzDataLoader by default; build_dataset + Ray ParquetDataLoader with --pipeline ray),
BaseModel's fit/train_step (Adam, BCE, its grad clipping), FeatureEmbedding, MLP_Block,
CrossNetV2 (or CrossNetMix), FactorizationMachine. The PyPI package ships no model classes
(DCNv2/DeepFM live in the FuxiCTR repository's model_zoo/, which is not published on PyPI), so
the two thin model classes below are written here on top of those building blocks, following
the model zoo's structure; "notes" in the output says so. bench/peer/README.md has the details.

Example:
    bench/peer/.venv/bin/python bench/peer/fuxictr_run.py --train /tmp/peer/train.csv \
        --valid /tmp/peer/valid.csv --test /tmp/peer/test.csv --schema kzoo/datasets/criteo.json \
        --model DCNv2 --out /tmp/peer/dcnv2.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import polars as pl
import ray
import torch
from torch import nn

import fuxictr
from fuxictr.features import FeatureMap
from fuxictr.preprocess import FeatureProcessor, build_dataset
from fuxictr.pytorch.dataloaders import RankDataLoader
from fuxictr.pytorch.dataloaders.parquet_dataloader import ParquetDataLoader
from fuxictr.pytorch.layers import CrossNetMix, CrossNetV2, FactorizationMachine, FeatureEmbedding, MLP_Block
from fuxictr.pytorch.models import BaseModel
from fuxictr.pytorch.torch_utils import seed_everything


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", required=True, help="train split CSV written by the kzoo side")
    p.add_argument("--valid", required=True, help="validation split CSV")
    p.add_argument("--test", required=True, help="test split CSV")
    p.add_argument("--schema", required=True, help="kzoo dataset schema JSON (kzoo/datasets/*.json)")
    p.add_argument("--model", required=True, choices=["DCNv2", "DeepFM"])
    p.add_argument("--embedding-dim", type=int, default=16)
    p.add_argument("--mlp", default="256,128", help="hidden units, comma separated")
    p.add_argument("--cross-layers", type=int, default=3, help="DCNv2 cross layers")
    p.add_argument("--low-rank", type=int, default=32,
                   help="DCNv2 rank; used only with --cross-net mix (FuxiCTR's CrossNetV2 is full rank)")
    p.add_argument("--cross-net", choices=["v2", "mix"], default="v2",
                   help="v2: FuxiCTR CrossNetV2 (full-rank W, x0*(Wx+b)+x, FuxiCTR's DCNv2 default); "
                        "mix: CrossNetMix with one expert and --low-rank (FuxiCTR's only low-rank "
                        "cross; adds tanh and an r x r matrix between U and V)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=0.003)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shuffle", action=argparse.BooleanOptionalAction, default=False,
                   help="shuffle the training rows each epoch (FuxiCTR's usual setting; seeded). Off by "
                        "default: kzoo feeds the train split in its row order, so both see the same batches")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--flush-denormal", action=argparse.BooleanOptionalAction, default=True,
                   help="torch.set_flush_denormal: on by default, as TensorFlow and XLA's CPU runtimes do; "
                        "torch's own default is off, and FuxiCTR's N(0, 1e-4) embeddings + Adam then hit "
                        "denormal floats that are ~10x slower on CPU")
    p.add_argument("--init", choices=["fuxictr", "kzoo"], default="fuxictr",
                   help="fuxictr: the library's defaults (embeddings N(0, 1e-4); every nn.Linear, including "
                        "the Linear(1, d) embedding of a numeric feature and the LR weight of a numeric "
                        "feature, xavier_normal); kzoo: embeddings and numeric embeddings N(0, 0.05), "
                        "linear-term (LR) weights 0, as kzoo's FeatureEmbedding/Linear blocks")
    p.add_argument("--missing-as-oov", action="store_true",
                   help="FuxiCTR's native handling of a missing categorical (shares the OOV id); "
                        "default: missing is a token of its own, as in kzoo")
    p.add_argument("--work-dir", default=None,
                   help="where FuxiCTR writes its parquet/feature map/checkpoint (default: a temp dir, removed)")
    p.add_argument("--pipeline", choices=["inprocess", "ray"], default="inprocess",
                   help="inprocess: FeatureProcessor read/preprocess/fit/transform in this process -> .npz -> "
                        "FuxiCTR NpzDataLoader (torch DataLoader); ray: FuxiCTR's stock build_dataset "
                        "(Ray map_batches -> parquet) -> ParquetDataLoader (Ray iter_torch_batches); "
                        "Ray adds ~1-2 min of fixed overhead on a 2-core machine")
    p.add_argument("--loader-workers", type=int, default=1,
                   help="NpzDataLoader num_workers (FuxiCTR's default 1: one prefetching worker process)")
    p.add_argument("--verbose", action="store_true", help="FuxiCTR's INFO logging on stderr")
    p.add_argument("--out", required=True, help="result JSON path")
    return p.parse_args(argv)


MISSING_TOKEN = "__kzoo_missing__"


class KzooFeatureProcessor(FeatureProcessor):
    """FuxiCTR's FeatureProcessor plus two 'preprocess' hooks (FuxiCTR's extension point)."""

    def signed_log1p(self, col):
        x = pl.col(col).cast(pl.Float64)
        return x.sign() * x.abs().log1p()

    def missing_token(self, col):  # runs after fill_na(""): "" -> a real token
        return pl.when(pl.col(col) == "").then(pl.lit(MISSING_TOKEN)).otherwise(pl.col(col))


class SeededParquetDataLoader(ParquetDataLoader):
    """FuxiCTR's ParquetDataLoader, its Ray dataset read once up front and its shuffle seeded.

    Stock FuxiCTR re-reads the parquet lazily inside the first epoch and calls Ray's
    random_shuffle() unseeded; here the read happens before fit (so the fit timing is not the
    one-off parquet read) and each epoch's shuffle is seeded from --seed.
    """

    def __init__(self, *a, seed=0, **kw):
        super().__init__(*a, **kw)
        self.dataset = self.dataset.materialize()
        self._seed, self._epoch = seed, 0

    def __iter__(self):
        if not self.shuffle:  # Ray Data does not promise row order (preserve_order is off)
            return super().__iter__()
        dataset = self.dataset.random_shuffle(seed=self._seed * 1000 + self._epoch)
        self._epoch += 1
        return iter(dataset.iter_torch_batches(batch_size=self.batch_size, drop_last=False,
                                               prefetch_batches=self.num_workers))


def kzoo_init(model):
    """Re-initialise the embedding tables the way kzoo's blocks do (dense layers stay xavier)."""
    from fuxictr.pytorch.layers import FeatureEmbeddingDict
    from fuxictr.pytorch.layers.blocks.logistic_regression import LogisticRegression
    linear_tables = set()
    for module in model.modules():
        if isinstance(module, LogisticRegression):
            linear_tables.update(id(m) for m in module.modules())
    with torch.no_grad():
        for module in model.modules():
            if not isinstance(module, FeatureEmbeddingDict):
                continue
            for layer in module.embedding_layers.values():
                if id(layer) in linear_tables:
                    nn.init.zeros_(layer.weight)
                else:
                    nn.init.normal_(layer.weight, std=0.05)
                    if isinstance(layer, nn.Embedding) and layer.padding_idx is not None:
                        layer.weight[layer.padding_idx].zero_()


def build_dataset_inprocess(processor, train, valid, test):
    """FuxiCTR's build_dataset without Ray: the same read_data/preprocess/fit (train stats only),
    then FeatureProcessor.transform on each whole split in this process, saved as the .npz files
    that FuxiCTR's NpzDataLoader reads. build_dataset does the same transform through Ray
    map_batches into parquet, which costs ~15 s of fixed overhead per split on a 2-core machine."""
    frames = {}
    for split, path in (("train", train), ("valid", valid), ("test", test)):
        frames[split] = processor.preprocess(processor.read_data(path, data_format="csv"))
    processor.fit(frames["train"], rebuild_dataset=True, meta_ddf=None)
    paths = []
    for split, ddf in frames.items():
        df = ddf.collect()
        batch = {name: df[name].to_numpy() for name in df.columns}
        out = processor.transform(batch)
        path = os.path.join(processor.data_dir, split + ".npz")
        np.savez(path, **{k: np.asarray(v) for k, v in out.items()})
        paths.append(path)
    return tuple(paths)


class DCNv2(BaseModel):
    """DCN-V2, parallel: cross net and MLP over the flat embeddings, concatenated -> linear."""

    def __init__(self, feature_map, embedding_dim, mlp_units, num_cross_layers, cross_net, low_rank,
                 learning_rate, **kwargs):
        super().__init__(feature_map, model_id="DCNv2", **kwargs)
        self.embedding_layer = FeatureEmbedding(feature_map, embedding_dim)
        width = feature_map.sum_emb_out_dim()
        self.crossnet = (CrossNetV2(width, num_cross_layers) if cross_net == "v2" else
                         CrossNetMix(width, num_cross_layers, low_rank=low_rank, num_experts=1))
        self.parallel_dnn = MLP_Block(input_dim=width, output_dim=None, hidden_units=mlp_units,
                                      hidden_activations="ReLU", output_activation=None,
                                      dropout_rates=0, batch_norm=False)
        self.fc = nn.Linear(width + mlp_units[-1], 1)
        self.compile(kwargs["optimizer"], kwargs["loss"], learning_rate)
        self.reset_parameters()
        self.model_to_device()

    def forward(self, inputs):
        X = self.get_inputs(inputs)
        emb = self.embedding_layer(X, flatten_emb=True)
        cross = self.crossnet(emb).view(emb.shape[0], -1)
        out = self.fc(torch.cat([cross, self.parallel_dnn(emb)], dim=-1))
        return {"y_pred": self.output_activation(out)}


class DeepFM(BaseModel):
    """DeepFM: FactorizationMachine (bias + linear + pairwise FM) + MLP logit, shared embeddings."""

    def __init__(self, feature_map, embedding_dim, mlp_units, learning_rate, **kwargs):
        super().__init__(feature_map, model_id="DeepFM", **kwargs)
        self.embedding_layer = FeatureEmbedding(feature_map, embedding_dim)
        self.fm = FactorizationMachine(feature_map)
        self.mlp = MLP_Block(input_dim=feature_map.sum_emb_out_dim(), output_dim=1, hidden_units=mlp_units,
                             hidden_activations="ReLU", output_activation=None,
                             dropout_rates=0, batch_norm=False)
        self.compile(kwargs["optimizer"], kwargs["loss"], learning_rate)
        self.reset_parameters()
        self.model_to_device()

    def forward(self, inputs):
        X = self.get_inputs(inputs)
        emb = self.embedding_layer(X)
        logit = self.fm(X, emb) + self.mlp(emb.flatten(start_dim=1))
        return {"y_pred": self.output_activation(logit)}


def feature_cols_from_schema(schema: dict, missing_as_oov: bool) -> tuple[list, dict, list[str]]:
    """kzoo dataset schema -> FuxiCTR feature_cols, label_col, and notes on the mapping."""
    notes = []
    cols = []
    for f in schema["features"]:
        name, kind = f["name"], f.get("type")
        if kind == "numeric":
            norm = f.get("norm", "none")
            col = {"name": name, "active": True, "dtype": "float", "type": "numeric",
                   "fill_na": float(f.get("fill", 0.0))}
            if norm in ("log", "log_standard"):
                col["preprocess"] = "signed_log1p"
            if norm in ("standard", "log_standard"):
                col["normalizer"] = "StandardScaler"
            if norm not in ("none", "log", "standard", "log_standard"):
                raise SystemExit(f"feature {name!r}: norm {norm!r} has no FuxiCTR mapping here")
            cols.append(col)
        elif kind == "categorical":
            if any(k in f for k in ("hash_buckets", "max_id", "embedding")) or "max_size" in f.get("vocab", {}):
                raise SystemExit(f"feature {name!r}: only vocab/min_count categoricals are mapped "
                                 f"(hash_buckets/max_id/shared embedding/max_size are not)")
            col = {"name": name, "active": True, "dtype": "str", "type": "categorical",
                   "min_categr_count": int(f.get("vocab", {}).get("min_count", 1)), "fill_na": ""}
            if not missing_as_oov:
                col["preprocess"] = "missing_token"
            cols.append(col)
        else:
            raise SystemExit(f"feature {name!r}: type {kind!r} is not mapped (numeric and categorical only)")
    label = schema["label"]
    if not isinstance(label, str):
        if len(label) != 1:
            raise SystemExit("one binary label only")
        label = label[0]
    if any(c["type"] == "numeric" and c.get("preprocess") for c in cols):
        notes.append("numeric: FuxiCTR fill_na=<schema fill>, then sign(x)*log1p|x| as a FuxiCTR "
                     "'preprocess' hook (a polars expression on a FeatureProcessor subclass; FuxiCTR's "
                     "Normalizer has no log), then FuxiCTR's StandardScaler fitted on train stats "
                     "(ddof=0) -- the same order and statistics as kzoo's log_standard")
    if not missing_as_oov:
        notes.append("categorical: a missing value is its own vocabulary token (kzoo's behaviour) via a "
                     "'preprocess' hook; FuxiCTR natively folds missing into the OOV id")
    notes.append("categorical: min_categr_count = kzoo vocab.min_count, vocab fitted on train only, "
                 "ids by (-count, value) like kzoo; FuxiCTR keeps a padding row 0 and OOV last "
                 "(+1 unused row per field vs kzoo)")
    return cols, {"name": label, "dtype": "float"}, notes


def metrics(y, p):
    y = np.asarray(y, np.float64)
    p = np.asarray(p, np.float64)
    try:
        from sklearn.metrics import log_loss, roc_auc_score
        return float(roc_auc_score(y, p)), float(log_loss(y, np.clip(p, 1e-7, 1 - 1e-7), labels=[0, 1]))
    except ImportError:  # numpy fallback: rank AUC with ties averaged
        order = np.argsort(p, kind="mergesort")
        ranks = np.empty(len(p))
        sp = p[order]
        i = 0
        while i < len(sp):
            j = i
            while j + 1 < len(sp) and sp[j + 1] == sp[i]:
                j += 1
            ranks[order[i:j + 1]] = (i + j) / 2 + 1
            i = j + 1
        pos = y == 1
        n1, n0 = pos.sum(), (~pos).sum()
        auc = (ranks[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0)
        q = np.clip(p, 1e-7, 1 - 1e-7)
        return float(auc), float(-np.mean(y * np.log(q) + (1 - y) * np.log1p(-q)))


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    torch.set_num_threads(args.threads)
    flushing = bool(torch.set_flush_denormal(args.flush_denormal)) and args.flush_denormal
    seed_everything(args.seed)
    mlp = [int(u) for u in args.mlp.split(",") if u.strip()]

    with open(args.schema) as fh:
        schema = json.load(fh)
    feature_cols, label_col, notes = feature_cols_from_schema(schema, args.missing_as_oov)

    work = args.work_dir or tempfile.mkdtemp(prefix="fuxictr_peer_")
    own_work = args.work_dir is None
    dataset_id = f"kzoo_{schema.get('name', 'data')}"
    data_dir = os.path.join(work, dataset_id)
    if os.path.exists(os.path.join(data_dir, "feature_map.json")):
        shutil.rmtree(data_dir)  # build_dataset silently reuses a stale feature map otherwise
    try:
        t0 = time.perf_counter()
        processor = KzooFeatureProcessor(feature_cols=feature_cols, label_col=label_col,
                                         dataset_id=dataset_id, data_root=work)
        if args.pipeline == "ray":
            train_p, valid_p, test_p = build_dataset(processor, train_data=os.path.abspath(args.train),
                                                     valid_data=os.path.abspath(args.valid),
                                                     test_data=os.path.abspath(args.test), data_format="csv")
        else:
            train_p, valid_p, test_p = build_dataset_inprocess(processor, os.path.abspath(args.train),
                                                               os.path.abspath(args.valid),
                                                               os.path.abspath(args.test))
        feature_map = FeatureMap(dataset_id, data_dir)
        feature_map.load(os.path.join(data_dir, "feature_map.json"), {"embedding_dim": args.embedding_dim})
        if args.pipeline == "ray":
            loaders = dict(data_format="parquet", data_loader=SeededParquetDataLoader, seed=args.seed)
        else:  # torch DataLoader; its shuffle draws from torch's RNG, seeded by seed_everything
            loaders = dict(data_format="npz", num_workers=args.loader_workers)
        train_gen, valid_gen, test_gen = RankDataLoader(
            feature_map, stage="both", train_data=train_p, valid_data=valid_p, test_data=test_p,
            batch_size=args.batch_size, shuffle=args.shuffle, **loaders)
        prep_seconds = time.perf_counter() - t0

        common = dict(gpu=-1, task="binary_classification", optimizer="adam", loss="binary_crossentropy",
                      metrics=["logloss", "AUC"], monitor="AUC", monitor_mode="max", verbose=0,
                      model_root=os.path.join(work, "checkpoints"), embedding_regularizer=None,
                      net_regularizer=None,
                      # a fixed number of epochs and the final weights, as kzoo trains: no early stop,
                      # no LR decay on plateau, and fit's closing reload loads the last checkpoint
                      early_stop_patience=args.epochs + 1, reduce_lr_on_plateau=False,
                      save_best_only=False)
        if args.model == "DCNv2":
            model = DCNv2(feature_map, args.embedding_dim, mlp, args.cross_layers, args.cross_net,
                          args.low_rank, args.lr, **common)
        else:
            model = DeepFM(feature_map, args.embedding_dim, mlp, args.lr, **common)
        if args.init == "kzoo":
            kzoo_init(model)
        os.makedirs(model.model_dir, exist_ok=True)  # BaseModel saves its checkpoint there
        params = int(sum(p.numel() for p in model.parameters() if p.requires_grad))

        # Time BaseModel.fit, minus its end-of-epoch validation/checkpointing and final reload.
        side = {"s": 0.0}

        def timed(fn):
            def wrapper(*a, **kw):
                s = time.perf_counter()
                try:
                    return fn(*a, **kw)
                finally:
                    side["s"] += time.perf_counter() - s
            return wrapper

        model.eval_step = timed(model.eval_step)
        model.load_weights = timed(model.load_weights)
        t0 = time.perf_counter()
        model.fit(train_gen, epochs=args.epochs, validation_data=valid_gen, max_gradient_norm=10.0)
        fit_seconds = time.perf_counter() - t0
        train_seconds = fit_seconds - side["s"]
        steps = model._total_steps
        trained_examples = train_gen.num_samples * (model._epoch_index + 1)

        y_valid = np.concatenate([b[label_col["name"]].numpy().reshape(-1) for b in valid_gen])
        valid_auc, valid_logloss = metrics(y_valid, model.predict(valid_gen))
        y_test = np.concatenate([b[label_col["name"]].numpy().reshape(-1) for b in test_gen])
        p_test = model.predict(test_gen)
        test_auc, test_logloss = metrics(y_test, p_test)

        notes = [
            "model class written in this script on top of fuxictr's BaseModel (fit/train_step/Adam/BCE), "
            "FeatureEmbedding, MLP_Block and "
            + ("CrossNetV2/CrossNetMix" if args.model == "DCNv2" else "FactorizationMachine (LR + FM)")
            + ": the PyPI fuxictr package ships no DCNv2/DeepFM class (they live in the FuxiCTR "
              "repository's model_zoo/, not published on PyPI); structure follows the model zoo",
        ] + notes
        if args.model == "DCNv2":
            notes.append("DCNv2: parallel structure, CrossNetV2 (full-rank W per layer; --low-rank ignored, "
                         "kzoo uses W = U V^T of rank 32)" if args.cross_net == "v2" else
                         f"DCNv2: CrossNetMix with 1 expert, rank {args.low_rank} (tanh(C tanh(V^T x)) inside, "
                         "unlike kzoo's linear U V^T)")
        notes += [
            "training loop: FuxiCTR BaseModel.fit -- Adam, mean BCE, grad-norm clipping at 10 (FuxiCTR "
            "default), validation after each epoch; early stopping and LR decay on plateau off and the "
            "last checkpoint kept, so it trains --epochs epochs and keeps the final weights, as kzoo",
            ("init: FuxiCTR defaults -- embeddings N(0, 1e-4); every nn.Linear xavier_normal, including a "
             "numeric feature's Linear(1, d) embedding (std ~0.34 at d=16) and its LR weight (std 1); kzoo: "
             "N(0, 0.05) embeddings, linear term 0") if args.init == "fuxictr" else
            ("init: --init kzoo -- embeddings and numeric embeddings N(0, 0.05), LR weights 0 (kzoo's "
             "FeatureEmbedding/Linear); dense layers keep FuxiCTR's xavier_normal (kzoo: glorot_uniform)"),
            ("data: FuxiCTR build_dataset (polars -> Ray map_batches -> parquet) and ParquetDataLoader "
             "(Ray iter_torch_batches), read once before fit; train shuffle seeded by --seed (a subclass; "
             "stock FuxiCTR leaves Ray's random_shuffle unseeded)") if args.pipeline == "ray" else
            ("data: FuxiCTR FeatureProcessor read_data/preprocess/fit (train only)/transform run in-process "
             "(build_dataset's steps minus its Ray map_batches), saved as .npz, batched by FuxiCTR's "
             f"NpzDataLoader (torch DataLoader, num_workers={args.loader_workers}; --shuffle draws from torch's seeded RNG)"),
            "train_seconds: BaseModel.fit wall time minus its validation/checkpoint/reload (it includes "
            "the loader's batching); fit_examples_per_s counts the whole fit, validation included, the way "
            "kzoo's metrics.json train_examples_per_s does",
            ("train rows shuffled each epoch (seeded)" if args.shuffle else
             "train rows in the split's order, unshuffled, as kzoo feeds them (same batches)"),
            f"torch threads {torch.get_num_threads()}; CPU; flush denormals to zero: {flushing}",
        ]
        result = {
            "model": args.model,
            "test_auc": test_auc,
            "test_logloss": test_logloss,
            "train_examples_per_s": trained_examples / train_seconds,
            "fit_examples_per_s": trained_examples / fit_seconds,
            "train_seconds": train_seconds,
            "params": params,
            "fuxictr_version": fuxictr.__version__ if hasattr(fuxictr, "__version__") else
            __import__("fuxictr.version", fromlist=["__version__"]).__version__,
            "torch_version": torch.__version__,
            "notes": notes,
            "valid_auc": valid_auc,
            "valid_logloss": valid_logloss,
            "test_mean_prediction": float(np.mean(p_test)),
            "test_positive_rate": float(np.mean(y_test)),
            "train_examples": trained_examples,
            "train_steps": steps,
            "fit_seconds_total": fit_seconds,
            "preprocess_seconds": prep_seconds,
            "config": {"embedding_dim": args.embedding_dim, "mlp": mlp, "cross_layers": args.cross_layers,
                       "cross_net": args.cross_net, "low_rank": args.low_rank if args.cross_net == "mix" else None,
                       "batch_size": args.batch_size, "lr": args.lr, "epochs": args.epochs, "seed": args.seed,
                       "threads": args.threads, "missing_as_oov": args.missing_as_oov,
                       "pipeline": args.pipeline, "init": args.init,
                       "shuffle": args.shuffle, "flush_denormal": flushing,
                       "schema": os.path.basename(args.schema)},
        }
    finally:
        if ray.is_initialized():
            ray.shutdown()
        if own_work:
            shutil.rmtree(work, ignore_errors=True)
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=2)
    print(json.dumps({k: v for k, v in result.items() if k not in ("notes", "config")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
