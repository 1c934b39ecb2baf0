"""Train FuxiCTR's DIN on kzoo's MovieLens split; report test AUC, logloss and steady-state speed.

Runs INSIDE the peer venv (bench/peer/.venv, made by bench/peer/setup.sh); it imports no kzoo
module. Inputs: the train / validation / test CSVs that bench/sequence_peer.py writes from kzoo's
MovieLens loader (`label` + the features below; a history is one cell, its items joined by "^",
FuxiCTR's default sequence splitter, oldest first, "" = empty).

What is FuxiCTR's (fuxictr 2.3.10 from PyPI, used as is):
  - FeatureProcessor read_data / preprocess / fit (train split only) / transform, with `sequence`
    features and `share_embedding` (the history shares the target item's table and vocabulary,
    the category history the target category's), padding id 0; NpzDataLoader batches
    (bench/peer/fuxictr_run.py's in-process build_dataset, as in the other peer scripts);
  - FeatureEmbeddingDict (embedding tables, the shared ones one module), MaskedAveragePooling (the
    `item_genres` tags: FuxiCTR's default encoder of a sequence feature), DIN_Attention
    (fuxictr.pytorch.layers.attentions.target_attention: MLP_Block over [t, h, t-h, t*h] with Dice,
    weights times the mask, not normalised), Dice, MLP_Block;
  - BaseModel: compile (Adam), fit / train_epoch / train_step (mean BCE on the sigmoid output,
    gradient-norm clipping at 10), predict, reset_parameters (xavier_normal Linear, zero bias;
    embeddings N(0, 1e-4), padding row 0).

What is written here: the `DIN` model class. The PyPI package ships the layers and BaseModel but
no model classes (they live in the FuxiCTR repository's model_zoo/, not published on PyPI), so
`DIN` below follows model_zoo/DIN/src/DIN.py: FeatureEmbeddingDict -> DIN_Attention of the target
(item_id, item_cat) over the history (hist_item_id, hist_item_cat) with mask = (hist_item_id != 0)
-> the attended vectors replace the history fields -> all fields flattened -> MLP_Block with Dice
-> sigmoid. The only change from the zoo file: dict2tensor(flatten_emb=True), the 2.3.10 API (the
repository's newer dict2tensor takes dynamic_emb_dim). Also written here: the feature mapping,
the per-step timer and the steady-state window; "notes" in the output JSON says so.

Speed: every BaseModel.train_step is timed. `steady_examples_per_s` = rows of the steps
warmup+1 .. warmup+timed / (end of the last of them - end of step `warmup`): after warm-up, within
the epoch (no epoch boundary, validation or checkpointing inside), full batches only; the loader's
batching and fit's loss.item() between the steps are inside the window, as they are in training.

Example:
    bench/peer/.venv/bin/python bench/peer/fuxictr_din.py --train /tmp/seq/train.csv \
        --valid /tmp/seq/valid.csv --test /tmp/seq/test.csv --batch-size 256 --out /tmp/seq/fx.json
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

from timing import pin_cpus, steady_window  # bench/peer/timing.py, beside this script


def units(text: str) -> list[int]:
    return [int(u) for u in text.split(",") if u.strip()]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", required=True)
    p.add_argument("--valid", required=True)
    p.add_argument("--test", required=True)
    p.add_argument("--embedding-dim", type=int, default=16)
    p.add_argument("--attention-units", default="80,40", help="DIN_Attention hidden units (Dice)")
    p.add_argument("--mlp", default="200,80", help="DNN hidden units (Dice), then Linear(., 1)")
    p.add_argument("--max-len", type=int, default=50, help="history max_len")
    p.add_argument("--genres", action=argparse.BooleanOptionalAction, default=True,
                   help="use the item_genres tags (a FuxiCTR sequence feature, MaskedAveragePooling)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warmup-steps", type=int, default=10, help="train steps before the timed window")
    p.add_argument("--timed-steps", type=int, default=300, help="train steps in the timed window (at most)")
    p.add_argument("--threads", type=int, default=2,
                   help="torch intra-op threads; the process is also pinned to this many CPUs")
    p.add_argument("--flush-denormal", action=argparse.BooleanOptionalAction, default=True,
                   help="torch.set_flush_denormal (TF and XLA's CPU runtimes flush; torch does not by default)")
    p.add_argument("--init", choices=["fuxictr", "kzoo"], default="fuxictr",
                   help="fuxictr: the library's defaults; kzoo: embedding tables N(0, 0.05) as kzoo's "
                        "(dense layers stay xavier_normal)")
    p.add_argument("--loader-workers", type=int, default=1,
                   help="NpzDataLoader num_workers (FuxiCTR's default 1: a prefetching worker process; 0: batches "
                        "made in this process, which bench/sequence_peer.py uses by default: on 2 pinned CPUs the "
                        "worker process competes with the torch threads)")
    p.add_argument("--predictions", action="store_true", help="include the test predictions in the JSON")
    p.add_argument("--verbose", action="store_true")
    p.add_argument("--out", required=True)
    return p.parse_args(argv)


def feature_cols(max_len: int, genres: bool) -> list[dict]:
    """kzoo's MovieLens features (kzoo/datasets/movielens.json, less hist_gap) as FuxiCTR feature specs."""
    cat = lambda name, **kw: {"name": name, "active": True, "dtype": "str", "type": "categorical",  # noqa: E731
                              "fill_na": "", "preprocess": "missing_token", **kw}
    seq = lambda name, **kw: {"name": name, "active": True, "dtype": "str", "type": "sequence",  # noqa: E731
                              "splitter": "^", "fill_na": "", "padding": "post", **kw}
    cols = [cat("user_id"), cat("gender"), cat("age"), cat("occupation"), cat("zip"),
            cat("item_id"), cat("item_cat")]
    if genres:  # a tags feature: FuxiCTR's default sequence encoder, masked mean pooling
        cols.append(seq("item_genres", max_len=6))
    cols.append(cat("year", min_categr_count=2))
    # The histories share the target's table and vocabulary; no encoder: DIN reads them item by item.
    cols += [seq("hist_item_id", max_len=max_len, share_embedding="item_id", feature_encoder=None),
             seq("hist_item_cat", max_len=max_len, share_embedding="item_cat", feature_encoder=None)]
    return cols


def main(argv=None):
    args = parse_args(argv)
    cpus = pin_cpus(args.threads)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

    import numpy as np
    import torch
    from pandas.core.common import flatten
    from torch import nn

    import fuxictr
    from fuxictr.features import FeatureMap
    from fuxictr.pytorch.dataloaders import RankDataLoader
    from fuxictr.pytorch.layers import DIN_Attention, Dice, FeatureEmbeddingDict, MLP_Block
    from fuxictr.pytorch.models import BaseModel
    from fuxictr.pytorch.torch_utils import seed_everything

    from fuxictr_run import KzooFeatureProcessor, build_dataset_inprocess, kzoo_init, metrics

    class DIN(BaseModel):
        """model_zoo/DIN/src/DIN.py (FuxiCTR), on the 2.3.10 package's layers."""

        def __init__(self, feature_map, model_id="DIN", gpu=-1, dnn_hidden_units=[512, 128, 64],
                     dnn_activations="ReLU", attention_hidden_units=[64], attention_hidden_activations="Dice",
                     attention_output_activation=None, attention_dropout=0, learning_rate=1e-3,
                     embedding_dim=10, net_dropout=0, batch_norm=False,
                     din_target_field=[("item_id", "cate_id")], din_sequence_field=[("click_history", "cate_history")],
                     din_use_softmax=False, embedding_regularizer=None, net_regularizer=None, **kwargs):
            super().__init__(feature_map, model_id=model_id, gpu=gpu, embedding_regularizer=embedding_regularizer,
                             net_regularizer=net_regularizer, **kwargs)
            if not isinstance(din_target_field, list):
                din_target_field = [din_target_field]
            self.din_target_field = din_target_field
            if not isinstance(din_sequence_field, list):
                din_sequence_field = [din_sequence_field]
            self.din_sequence_field = din_sequence_field
            assert len(self.din_target_field) == len(self.din_sequence_field)
            if isinstance(dnn_activations, str) and dnn_activations.lower() == "dice":
                dnn_activations = [Dice(u) for u in dnn_hidden_units]
            self.feature_map = feature_map
            self.embedding_dim = embedding_dim
            self.embedding_layer = FeatureEmbeddingDict(feature_map, embedding_dim)
            self.attention_layers = nn.ModuleList(
                [DIN_Attention(embedding_dim * len(target_field) if type(target_field) == tuple else embedding_dim,
                               attention_units=attention_hidden_units,
                               hidden_activations=attention_hidden_activations,
                               output_activation=attention_output_activation,
                               dropout_rate=attention_dropout, use_softmax=din_use_softmax)
                 for target_field in self.din_target_field])
            self.dnn = MLP_Block(input_dim=feature_map.sum_emb_out_dim(), output_dim=1, hidden_units=dnn_hidden_units,
                                 hidden_activations=dnn_activations, output_activation=self.output_activation,
                                 dropout_rates=net_dropout, batch_norm=batch_norm)
            self.compile(kwargs["optimizer"], kwargs["loss"], learning_rate)
            self.reset_parameters()
            self.model_to_device()

        def forward(self, inputs):
            X = self.get_inputs(inputs)
            feature_emb_dict = self.embedding_layer(X)
            for idx, (target_field, sequence_field) in enumerate(zip(self.din_target_field, self.din_sequence_field)):
                target_emb = self.get_embedding(target_field, feature_emb_dict)
                sequence_emb = self.get_embedding(sequence_field, feature_emb_dict)
                seq_field = list(flatten([sequence_field]))[0]
                mask = X[seq_field].long() != 0  # padding_idx = 0
                pooling_emb = self.attention_layers[idx](target_emb, sequence_emb, mask)
                for field, field_emb in zip(list(flatten([sequence_field])),
                                            pooling_emb.split(self.embedding_dim, dim=-1)):
                    feature_emb_dict[field] = field_emb
            feature_emb = self.embedding_layer.dict2tensor(feature_emb_dict, flatten_emb=True)
            return {"y_pred": self.dnn(feature_emb)}

        def get_embedding(self, field, feature_emb_dict):
            if type(field) == tuple:
                return torch.cat([feature_emb_dict[f] for f in field], dim=-1)
            return feature_emb_dict[field]

    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s")
    # flush first: torch's intra-op threads, made at the first parallel region, copy this thread's MXCSR
    flushing = bool(torch.set_flush_denormal(args.flush_denormal)) and args.flush_denormal
    torch.set_num_threads(args.threads)
    seed_everything(args.seed)

    work = tempfile.mkdtemp(prefix="fuxictr_din_")
    dataset_id = "kzoo_movielens"
    data_dir = os.path.join(work, dataset_id)
    try:
        t0 = time.perf_counter()
        processor = KzooFeatureProcessor(feature_cols=feature_cols(args.max_len, args.genres),
                                         label_col={"name": "label", "dtype": "float"},
                                         dataset_id=dataset_id, data_root=work)
        train_p, valid_p, test_p = build_dataset_inprocess(processor, os.path.abspath(args.train),
                                                           os.path.abspath(args.valid), os.path.abspath(args.test))
        feature_map = FeatureMap(dataset_id, data_dir)
        feature_map.load(os.path.join(data_dir, "feature_map.json"), {"embedding_dim": args.embedding_dim})
        train_gen, valid_gen, test_gen = RankDataLoader(
            feature_map, stage="both", train_data=train_p, valid_data=valid_p, test_data=test_p,
            batch_size=args.batch_size, shuffle=False, data_format="npz", num_workers=args.loader_workers)
        prep_seconds = time.perf_counter() - t0

        model = DIN(feature_map, dnn_hidden_units=units(args.mlp), dnn_activations="Dice",
                    attention_hidden_units=units(args.attention_units), attention_hidden_activations="Dice",
                    learning_rate=args.lr, embedding_dim=args.embedding_dim,
                    din_target_field=[("item_id", "item_cat")], din_sequence_field=[("hist_item_id", "hist_item_cat")],
                    din_use_softmax=False, gpu=-1, task="binary_classification", optimizer="adam",
                    loss="binary_crossentropy", metrics=["logloss", "AUC"], monitor="AUC", monitor_mode="max",
                    verbose=0, model_root=os.path.join(work, "checkpoints"),
                    # a fixed number of epochs and the final weights, as kzoo trains
                    early_stop_patience=args.epochs + 1, reduce_lr_on_plateau=False, save_best_only=False)
        if args.init == "kzoo":
            kzoo_init(model)
        os.makedirs(model.model_dir, exist_ok=True)
        params = int(sum(p.numel() for p in model.parameters() if p.requires_grad))

        steps = []  # (epoch, start, end, rows)
        train_step = model.train_step

        def timed_step(batch_data):
            s = time.perf_counter()
            loss = train_step(batch_data)
            steps.append((model._epoch_index, s, time.perf_counter(), len(batch_data["label"])))
            return loss

        model.train_step = timed_step
        t0 = time.perf_counter()
        model.fit(train_gen, epochs=args.epochs, validation_data=valid_gen, max_gradient_norm=10.0)
        fit_seconds = time.perf_counter() - t0
        steady = steady_window(steps, args.warmup_steps, args.timed_steps, args.batch_size)

        p_test = model.predict(test_gen)
        y_test = np.concatenate([b["label"].numpy().reshape(-1) for b in test_gen])
        test_auc, test_logloss = metrics(y_test, p_test)
        features = [c["name"] for c in feature_cols(args.max_len, args.genres)]
        version = getattr(fuxictr, "__version__", None) or __import__("fuxictr.version", fromlist=["x"]).__version__
        result = {
            "side": "fuxictr",
            "model": "DIN (FuxiCTR layers + BaseModel; model class after model_zoo/DIN)",
            "test_auc": test_auc,
            "test_logloss": test_logloss,
            **steady,
            "fit_examples_per_s": sum(s[3] for s in steps) / fit_seconds,
            "fit_seconds_total": fit_seconds,
            "preprocess_seconds": prep_seconds,
            "train_steps": len(steps),
            "train_examples": train_gen.num_samples,
            "params": params,
            "features": features,
            "vocab_sizes": {k: v.get("vocab_size") for k, v in feature_map.features.items()},
            "fuxictr_version": version,
            "torch_version": torch.__version__,
            "cpus": cpus,
            "notes": [
                "DIN model class written here after FuxiCTR's model_zoo/DIN/src/DIN.py (not on PyPI); everything "
                "else is fuxictr 2.3.10: FeatureProcessor (sequence features, share_embedding), NpzDataLoader, "
                "FeatureEmbeddingDict, DIN_Attention, Dice, MLP_Block, MaskedAveragePooling, BaseModel.fit/predict",
                "DIN_Attention: MLP_Block over [t, h, t-h, t*h] (4 x 32) with Dice hidden layers, Linear(., 1), "
                "weights times the mask, no softmax; its Dice is BatchNorm1d over every (row, position), "
                "padding included (kzoo's Dice leaves padded positions out of the statistics)",
                "histories: FuxiCTR sequence features, splitter '^', max_len %d, padding 'post' (right padding, as "
                "kzoo); share_embedding item_id / item_cat: one table and one vocabulary (target column + history "
                "items, train split) per pair, padding row 0, OOV last" % args.max_len,
                ("item_genres: FuxiCTR sequence feature (max_len 6) pooled by MaskedAveragePooling, kzoo's tags "
                 "mean" if args.genres else "item_genres not used"),
                "hist_gap not used (kzoo's DIN spec does not read the unpaired context sequence)",
                "categoricals: min_categr_count 1 (year 2) as kzoo's vocab.min_count, a missing value its own token",
                "training: BaseModel.fit, Adam (torch: eps 1e-8), mean BCE on the sigmoid output, grad-norm "
                "clipping at 10 (FuxiCTR's), 1 validation pass at the epoch end, no early stop / LR decay, "
                "final weights; train rows unshuffled in the split's order (the same batches as kzoo)",
                ("init: FuxiCTR's -- embeddings N(0, 1e-4), every nn.Linear xavier_normal, zero biases"
                 if args.init == "fuxictr" else
                 "init: --init kzoo -- embedding tables N(0, 0.05); dense layers xavier_normal"),
                f"torch threads {torch.get_num_threads()}, pinned to CPUs {cpus}; flush denormals {flushing}; "
                f"NpzDataLoader num_workers {args.loader_workers}",
                "steady_examples_per_s: full-batch steps after the warm-up steps, from the end of the last warm-up "
                "step to the end of the last timed step (BaseModel.train_step timed; loader and loss.item() between "
                "steps included); preprocessing, validation and checkpointing outside",
            ],
            "config": {k: getattr(args, k) for k in ("embedding_dim", "attention_units", "mlp", "max_len", "genres",
                                                     "batch_size", "lr", "epochs", "seed", "warmup_steps",
                                                     "timed_steps", "threads", "init", "loader_workers")},
        }
        if args.predictions:
            result["predictions"] = [round(float(x), 6) for x in p_test]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    with open(args.out, "w") as fh:
        json.dump(result, fh)
    print(json.dumps({k: v for k, v in result.items() if k not in ("notes", "config", "predictions")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
