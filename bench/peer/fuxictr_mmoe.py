"""Train FuxiCTR's MMoE (two binary tasks) on kzoo's split; report per-task test AUC and speed.

Runs INSIDE the peer venv (bench/peer/.venv); imports no kzoo module. Inputs: the train /
validation / test frames kzoo wrote (labels + raw features) and kzoo's dataset schema with a list
label (kzoo/datasets/census.json). The data path is fuxictr_run.py's (FeatureProcessor
read_data/preprocess/fit on train/transform in this process -> .npz -> FuxiCTR's NpzDataLoader),
with FuxiCTR's multi-label `label_col` list.

The model: the PyPI package (2.3.10) ships `fuxictr.pytorch.models.MultiTaskModel` (per-task
output activations, losses summed with equal weights, per-task evaluate/predict) but not the
model zoo's MMoE, so `MMoE_Layer` and `MMoE` below are written on MultiTaskModel following
FuxiCTR's model_zoo/multitask/MMoE/src/MMoE.py: FeatureEmbedding -> flatten -> experts
(MLP_Block, ReLU) and one gate per task (MLP_Block with `gate_hidden_units`, output num_experts,
softmax) -> per-task weighted sum of experts -> per-task tower MLP_Block(output_dim=1) -> sigmoid.

Speed: every train_step is timed; `steady_examples_per_s` = training rows of the epochs after the
first / (end of the epoch's last step - start of its first step), i.e. without the first epoch
(warm-up), without the end-of-epoch validation and checkpointing.

Example:
    bench/peer/.venv/bin/python bench/peer/fuxictr_mmoe.py --train /tmp/peer_census/train.csv \
        --valid /tmp/peer_census/valid.csv --test /tmp/peer_census/test.csv \
        --schema kzoo/datasets/census.json --out /tmp/peer_census/fuxictr_mmoe.json
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import fuxictr  # noqa: E402
from fuxictr.features import FeatureMap  # noqa: E402
from fuxictr.pytorch.dataloaders import RankDataLoader  # noqa: E402
from fuxictr.pytorch.layers import FeatureEmbedding, MLP_Block  # noqa: E402
from fuxictr.pytorch.models import MultiTaskModel  # noqa: E402
from fuxictr.pytorch.torch_utils import get_activation, seed_everything  # noqa: E402

from fuxictr_run import (KzooFeatureProcessor, build_dataset_inprocess, feature_cols_from_schema,  # noqa: E402
                         kzoo_init, metrics)


def units(text: str) -> list[int]:
    return [int(u) for u in text.split(",") if u.strip()]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", required=True)
    p.add_argument("--valid", required=True)
    p.add_argument("--test", required=True)
    p.add_argument("--schema", required=True, help="kzoo dataset schema JSON with a list label")
    p.add_argument("--embedding-dim", type=int, default=8)
    p.add_argument("--experts", type=int, default=8)
    p.add_argument("--expert-units", default="32")
    p.add_argument("--gate-units", default="", help="gate hidden units; empty = linear gates (kzoo's default)")
    p.add_argument("--tower-units", default="16")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--lr", type=float, default=0.003)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--flush-denormal", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--init", choices=["fuxictr", "kzoo"], default="fuxictr")
    p.add_argument("--shuffle", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--loader-workers", type=int, default=1)
    p.add_argument("--verbose", action="store_true")
    p.add_argument("--predictions", action="store_true", help="include the test predictions in the JSON")
    p.add_argument("--out", required=True)
    return p.parse_args(argv)


class MMoE_Layer(nn.Module):
    """model_zoo/multitask/MMoE: experts and one softmax gate per task over the same input."""

    def __init__(self, num_experts, num_tasks, input_dim, expert_hidden_units, gate_hidden_units,
                 hidden_activations="ReLU", net_dropout=0, batch_norm=False):
        super().__init__()
        self.num_experts, self.num_tasks = num_experts, num_tasks
        self.experts = nn.ModuleList([MLP_Block(input_dim=input_dim, hidden_units=expert_hidden_units,
                                                hidden_activations=hidden_activations, output_activation=None,
                                                dropout_rates=net_dropout, batch_norm=batch_norm)
                                      for _ in range(num_experts)])
        self.gate = nn.ModuleList([MLP_Block(input_dim=input_dim, hidden_units=gate_hidden_units,
                                             output_dim=num_experts, hidden_activations=hidden_activations,
                                             output_activation=None, dropout_rates=net_dropout,
                                             batch_norm=batch_norm)
                                   for _ in range(num_tasks)])
        self.gate_activation = get_activation("softmax")

    def forward(self, x):
        experts_output = torch.stack([self.experts[i](x) for i in range(self.num_experts)], dim=1)
        out = []
        for i in range(self.num_tasks):
            gate_output = self.gate_activation(self.gate[i](x))  # (?, num_experts)
            out.append(torch.sum(gate_output.unsqueeze(-1) * experts_output, dim=1))
        return out


class MMoE(MultiTaskModel):
    def __init__(self, feature_map, task, num_tasks, learning_rate, embedding_dim, num_experts,
                 expert_hidden_units, gate_hidden_units, tower_hidden_units, hidden_activations="ReLU",
                 net_dropout=0, batch_norm=False, **kwargs):
        super().__init__(feature_map, task=task, num_tasks=num_tasks, model_id="MMoE", **kwargs)
        self.embedding_layer = FeatureEmbedding(feature_map, embedding_dim)
        self.mmoe_layer = MMoE_Layer(num_experts=num_experts, num_tasks=self.num_tasks,
                                     input_dim=embedding_dim * feature_map.num_fields,
                                     expert_hidden_units=expert_hidden_units,
                                     gate_hidden_units=gate_hidden_units,
                                     hidden_activations=hidden_activations, net_dropout=net_dropout,
                                     batch_norm=batch_norm)
        self.tower = nn.ModuleList([MLP_Block(input_dim=expert_hidden_units[-1], output_dim=1,
                                              hidden_units=tower_hidden_units,
                                              hidden_activations=hidden_activations, output_activation=None,
                                              dropout_rates=net_dropout, batch_norm=batch_norm)
                                    for _ in range(num_tasks)])
        self.compile(kwargs["optimizer"], kwargs["loss"], learning_rate)
        self.reset_parameters()
        self.model_to_device()

    def forward(self, inputs):
        X = self.get_inputs(inputs)
        feature_emb = self.embedding_layer(X)
        expert_output = self.mmoe_layer(feature_emb.flatten(start_dim=1))
        labels = self.feature_map.labels
        return {f"{labels[i]}_pred": self.output_activation[i](self.tower[i](expert_output[i]))
                for i in range(self.num_tasks)}


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s")
    torch.set_num_threads(args.threads)
    flushing = bool(torch.set_flush_denormal(args.flush_denormal)) and args.flush_denormal
    seed_everything(args.seed)

    with open(args.schema) as fh:
        schema = json.load(fh)
    labels = schema["label"] if isinstance(schema["label"], list) else [schema["label"]]
    feature_cols, _, notes = feature_cols_from_schema({**schema, "label": labels[0]}, missing_as_oov=False)
    label_cols = [{"name": name, "dtype": "float"} for name in labels]

    work = tempfile.mkdtemp(prefix="fuxictr_mmoe_")
    dataset_id = f"kzoo_{schema.get('name', 'data')}"
    data_dir = os.path.join(work, dataset_id)
    try:
        t0 = time.perf_counter()
        processor = KzooFeatureProcessor(feature_cols=feature_cols, label_col=label_cols,
                                         dataset_id=dataset_id, data_root=work)
        train_p, valid_p, test_p = build_dataset_inprocess(processor, os.path.abspath(args.train),
                                                           os.path.abspath(args.valid), os.path.abspath(args.test))
        feature_map = FeatureMap(dataset_id, data_dir)
        feature_map.load(os.path.join(data_dir, "feature_map.json"), {"embedding_dim": args.embedding_dim})
        train_gen, valid_gen, test_gen = RankDataLoader(
            feature_map, stage="both", train_data=train_p, valid_data=valid_p, test_data=test_p,
            batch_size=args.batch_size, shuffle=args.shuffle, data_format="npz", num_workers=args.loader_workers)
        prep_seconds = time.perf_counter() - t0

        model = MMoE(feature_map, task=["binary_classification"] * len(labels), num_tasks=len(labels),
                     learning_rate=args.lr, embedding_dim=args.embedding_dim, num_experts=args.experts,
                     expert_hidden_units=units(args.expert_units), gate_hidden_units=units(args.gate_units),
                     tower_hidden_units=units(args.tower_units),
                     gpu=-1, optimizer="adam", loss="binary_crossentropy", metrics=["logloss", "AUC"],
                     monitor="AUC", monitor_mode="max", verbose=0, model_root=os.path.join(work, "checkpoints"),
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
            steps.append((model._epoch_index, s, time.perf_counter(), len(batch_data[labels[0]])))
            return loss

        model.train_step = timed_step
        t0 = time.perf_counter()
        model.fit(train_gen, epochs=args.epochs, validation_data=valid_gen, max_gradient_norm=10.0)
        fit_seconds = time.perf_counter() - t0

        per_epoch = {}
        for epoch, s, e, rows in steps:
            first, last, n = per_epoch.get(epoch, (s, e, 0))
            per_epoch[epoch] = (min(first, s), max(last, e), n + rows)
        epoch_rate = {ep: n / (last - first) for ep, (first, last, n) in sorted(per_epoch.items())}
        steady = [ep for ep in per_epoch if ep >= 1]
        steady_rows = sum(per_epoch[ep][2] for ep in steady)
        steady_secs = sum(per_epoch[ep][1] - per_epoch[ep][0] for ep in steady)

        p_test = model.predict(test_gen)
        y_test = {name: np.concatenate([b[name].numpy().reshape(-1) for b in test_gen]) for name in labels}
        tasks = {}
        for name in labels:
            auc, logloss = metrics(y_test[name], p_test[name])
            tasks[name] = {"auc": auc, "logloss": logloss, "mean_prediction": float(np.mean(p_test[name])),
                           "positive_rate": float(np.mean(y_test[name]))}
        version = getattr(fuxictr, "__version__", None) or __import__("fuxictr.version", fromlist=["x"]).__version__
        result = {
            "model": "MMoE (FuxiCTR MultiTaskModel)",
            "tasks": tasks,
            "steady_examples_per_s": steady_rows / steady_secs if steady_secs else None,
            "steady_epochs": sorted(steady),
            "epoch_examples_per_s": {str(k): v for k, v in epoch_rate.items()},
            "fit_examples_per_s": sum(n for _, _, _, n in steps) / fit_seconds,
            "fit_seconds_total": fit_seconds,
            "preprocess_seconds": prep_seconds,
            "train_steps": len(steps),
            "params": params,
            "fuxictr_version": version,
            "torch_version": torch.__version__,
            "notes": [
                "MMoE_Layer/MMoE written here on fuxictr.pytorch.models.MultiTaskModel following FuxiCTR's "
                "model_zoo/multitask/MMoE (the PyPI package ships MultiTaskModel but no MMoE)",
                "MultiTaskModel: per-task sigmoid + BCE, losses summed with equal weights (loss_weight EQ), "
                "BaseModel.fit with grad-norm clipping at 10; no early stop / LR decay, last weights kept",
                f"gates: MLP_Block hidden {units(args.gate_units) or 'none (linear)'} -> softmax over experts",
                f"init: {args.init}", f"torch threads {torch.get_num_threads()}; flush denormals {flushing}",
                "train rows " + ("shuffled each epoch (seeded)" if args.shuffle else "in the split's order, as kzoo"),
                "steady_examples_per_s: rows of epochs >= 2 / (last step end - first step start) of those "
                "epochs; excludes epoch 1, validation, checkpointing",
            ] + notes,
            "config": {k: getattr(args, k) for k in ("embedding_dim", "experts", "expert_units", "gate_units",
                                                     "tower_units", "batch_size", "lr", "epochs", "seed",
                                                     "threads", "init", "shuffle", "loader_workers")},
        }
        if args.predictions:
            result["predictions"] = {name: [round(float(x), 6) for x in p_test[name]] for name in labels}
            result["labels"] = {name: [int(x) for x in y_test[name]] for name in labels}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    with open(args.out, "w") as fh:
        json.dump(result, fh)
    print(json.dumps({k: v for k, v in result.items() if k not in ("notes", "config", "predictions", "labels")},
                     indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
