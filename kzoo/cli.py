"""The `kzoo` command line (contract in DESIGN.md)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def cmd_validate(args) -> int:
    from kzoo.graph import check_build
    from kzoo.spec import SpecError, load_spec

    failed = False
    for path in args.specs:
        try:
            check_build(load_spec(path))
        except SpecError as e:
            failed = True
            for where, msg in e.problems:
                print(f"{path}: {where}: {msg}", file=sys.stderr)
        else:
            print(f"{path}: ok")
    return 2 if failed else 0


def cmd_schema(args) -> int:
    from kzoo.spec import schema

    print(json.dumps(schema(), indent=2))
    return 0


def cmd_list(args) -> int:
    from kzoo import zoo_configs
    from kzoo.blocks.registry import block_types, describe, summary

    if args.name:
        types = block_types()
        if args.name in types:
            print(describe(types[args.name]))
            return 0
        path = zoo_configs.path(args.name)
        if path is not None:
            print(path.read_text())
            return 0
        from kzoo.spec import did_you_mean

        print(f"kzoo: error: {args.name!r} is neither a block type nor a zoo model"
              f"{did_you_mean(args.name, list(types) + zoo_configs.names())}; `kzoo list` shows both",
              file=sys.stderr)
        return 2
    print("blocks:")
    for name, cls in block_types().items():
        print(f"  {name:<18} {summary(cls)}")
    print("zoo models:")
    for name in zoo_configs.names():
        desc = json.loads(zoo_configs.path(name).read_text()).get("description", "")
        print(f"  {name:<18} {desc}")
    return 0


def cmd_train(args) -> int:
    from kzoo.trainer import train

    out = Path(args.out or Path("runs") / Path(args.spec).stem)
    metrics = train(args.spec, args.data, out, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
                    overwrite=args.overwrite, distribute=args.distribute, mesh=args.mesh,
                    virtual_devices=args.virtual_devices)
    _print_metrics(metrics)
    print(f"run: {out}  (model.keras, metrics.json, history.csv, curves.png)")
    if args.export:
        from kzoo.exporter import export

        _print_export(export(out, args.export))
    return 0


def _print_metrics(metrics: dict, prefix: str = "") -> None:
    for task, values in metrics.items():
        if isinstance(values, dict):
            flat = {k: v for k, v in values.items() if not isinstance(v, dict)}
            if flat:
                shown = "  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in flat.items())
                print(f"{prefix}{task}: {shown}")
            _print_metrics({k: v for k, v in values.items() if isinstance(v, dict)}, f"{prefix}{task}.")
    if prefix:
        return
    print(f"examples={metrics.get('examples')}  seconds={metrics.get('seconds', '-')}")


def cmd_evaluate(args) -> int:
    from kzoo.evaluate import evaluate

    metrics = evaluate(args.run, args.data)
    _print_metrics(metrics)
    out = Path(args.run) / ("metrics.eval.json" if args.data else "metrics.json")
    if args.data:
        out.write_text(json.dumps(metrics, indent=2))
        print(f"wrote {out}")
    return 0


def cmd_export(args) -> int:
    from kzoo.exporter import export

    _print_export(export(args.run, args.out, args.version))
    return 0


def _print_export(path: Path) -> None:
    meta = json.loads((Path(path) / "assets.extra" / "kzoo.json").read_text())
    if "towers" not in meta:
        print(f"export: {path}  (SavedModel; serving_default takes the raw feature columns)")
        return
    index = meta["index"]
    print(f"export: {path}  (retrieval SavedModel: the query's raw columns in, top {meta['k']} item_ids and "
          f"scores of {meta['corpus']} items out)")
    for tower, name in meta["towers"].items():
        print(f"export: {Path(path).parent.parent / name / Path(path).name}  ({tower} tower: {tower}_embedding out)")
    print(f"export: {Path(path) / 'assets.extra'}/items.npz, items.faiss  ({index['type']}, recall@10 against exact "
          f"search with corpus items as queries {index['self_recall@10']})")


def cmd_predict(args) -> int:
    from kzoo.predict import predict

    keep = [k.strip() for k in args.keep.split(",") if k.strip()] if args.keep else None
    frame = predict(args.target, args.data, keep=keep)
    if args.output and args.output.endswith((".json", ".jsonl")):
        frame.to_json(args.output, orient="records", lines=True)
    elif args.output:
        frame.to_csv(args.output, index=False)
    else:
        frame.to_csv(sys.stdout, index=False)
    if args.output:
        print(f"wrote {len(frame)} predictions to {args.output}", file=sys.stderr)
    return 0


def cmd_calibrate(args) -> int:
    from kzoo.calibration import FILE, calibrate, summary

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    result = calibrate(args.run, args.method, tasks, data=args.data)
    print(summary(result))
    print(f"wrote {Path(args.run) / FILE}, reliability_<task>.png and the calibrated metrics.json; "
          "`kzoo predict` and `kzoo export` now serve calibrated scores")
    return 0


def cmd_compress(args) -> int:
    from kzoo.compress import compress

    metrics = compress(args.run, args.out, args.method, sparsity=args.sparsity, epochs=args.epochs,
                       student=args.student, alpha=args.alpha, temperature=args.temperature,
                       t_squared=args.t_squared, batch_size=args.batch_size, overwrite=args.overwrite)
    _print_metrics({k: v for k, v in metrics.items() if k not in ("fine_tune", "sparsity", "teacher")})
    if "sparsity" in metrics:
        print(f"sparsity: target={metrics['sparsity']['target']}  achieved overall={metrics['sparsity']['overall']:.4f}")
    print(f"params={metrics['params']}  param_bytes={metrics['param_bytes']}  model.keras={metrics['model_keras_bytes']} B")
    print(f"run: {args.out}  ({args.method} of {args.run}; `kzoo export {args.out} --out BASE` serves it)")
    return 0


def cmd_diagnose(args) -> int:
    from kzoo.diagnose import diagnose, table

    report = diagnose(args.run, args.data, rows=args.rows)
    print(table(report))
    print(f"\nwrote {Path(args.run) / 'diagnose.json'} and {Path(args.run) / 'diagnose.png'}")
    return 0


def cmd_serving_config(args) -> int:
    from kzoo.serving import config as sc

    try:
        names = sc.model_names([Path(b) for b in args.bases], args.name or [])
        config = sc.model_config(args.bases, names, sc.scoped(args.labels or [], names, "--labels", sc.parse_labels),
                                 args.policy, sc.scoped(args.versions or [], names, "--versions", sc.parse_versions),
                                 args.root, args.allow_unloaded_labels)
    except sc.ConfigError as e:
        print(f"kzoo: error: {e}", file=sys.stderr)
        return 2
    out = sc.write_config(config, args.out)
    seen = f"{args.root.rstrip('/')}/{out.name}" if args.root else out.resolve()  # --root: mounted beside the bases
    print(f"wrote {out} ({len(config.model_config_list.config)} model(s)); serve with "
          f"tensorflow_model_server --model_config_file={seen}")
    print("\n".join(sc.describe(config)))
    return 0


def cmd_serve_check(args) -> int:
    from kzoo.serve_check import serve_check
    from kzoo.serving import check

    try:
        report = serve_check(args.export, run=args.run, data=args.data, rows=args.rows)
    except check.CheckError as e:
        print(f"kzoo: error: {e}", file=sys.stderr)
        return 2
    print(check.table(report))
    return 0 if check.passed(report) else 1


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kzoo", description="Keras 3 recommender model zoo: JSON specs -> "
                                "trained models -> TF Serving SavedModels.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("validate", help="check specs; exit 2 with 'SPEC: <json path>: message' on stderr")
    s.add_argument("specs", nargs="+")
    s.set_defaults(fn=cmd_validate)

    s = sub.add_parser("schema", help="print the spec JSON Schema (for editor completion)")
    s.set_defaults(fn=cmd_schema)

    s = sub.add_parser("list", help="blocks and zoo models, one line each; `kzoo list NAME` shows one")
    s.add_argument("name", nargs="?", help="a block type (its arguments, types and defaults) or a zoo model (its spec)")
    s.set_defaults(fn=cmd_list)

    s = sub.add_parser("train", help="train a spec and evaluate it on the held-out split")
    s.add_argument("spec", help="a spec file, or the name of a zoo model (kzoo list)")
    s.add_argument("--data", default="synthetic",
                   help="synthetic[:ROWS] (default), criteo:PATH, avazu:PATH, or a CSV/TSV/Parquet file")
    s.add_argument("--epochs", type=int)
    s.add_argument("--batch-size", type=int)
    s.add_argument("--seed", type=int)
    s.add_argument("--out", help="run dir (default runs/<spec name>); re-running resumes an interrupted run")
    s.add_argument("--overwrite", action="store_true", help="train again into a run dir that holds a finished run")
    s.add_argument("--export", metavar="BASE", help="also export the trained model under BASE/<next version>")
    s.add_argument("--distribute", choices=["data", "model"], help="train on every visible device: data = "
                   "replicated model, each batch split; model = embedding tables sharded (JAX); --batch-size is the "
                   "global batch (docs/scaling.md)")
    s.add_argument("--mesh", metavar="DxM", help="with --distribute model: D data-parallel replicas x M devices "
                   "sharding the tables (default 1xALL)")
    s.add_argument("--virtual-devices", type=int, metavar="N", help="split the CPU into N devices (to try "
                   "--distribute without accelerators; also $KZOO_VIRTUAL_DEVICES)")
    s.set_defaults(fn=cmd_train)

    s = sub.add_parser("evaluate", help="metrics of a run (its test split, or all rows of --data)")
    s.add_argument("run")
    s.add_argument("--data")
    s.set_defaults(fn=cmd_evaluate)

    s = sub.add_parser("diagnose", help="multi-task health: gate weights per expert, gate entropy, per-task "
                       "gradient norms and cosines at the shared parameters, with flags; a heatmap PNG")
    s.add_argument("run")
    s.add_argument("--data", help="rows to look at (default: the run's validation split)")
    s.add_argument("--rows", type=int, default=2048, help="how many rows (default 2048)")
    s.set_defaults(fn=cmd_diagnose)

    s = sub.add_parser("calibrate", help="fit Platt or isotonic calibration of the binary tasks on the run's "
                       "validation split; predictions and exports then serve calibrated scores")
    s.add_argument("run")
    s.add_argument("--method", required=True, choices=["platt", "isotonic"])
    s.add_argument("--tasks", metavar="NAMES", help="comma-separated tasks (default: every plain binary task)")
    s.add_argument("--data", help="the run's data, when run.json cannot re-read it (a run trained on a DataFrame)")
    s.set_defaults(fn=cmd_calibrate)

    s = sub.add_parser("export", help="SavedModel for TF Serving at BASE/VERSION")
    s.add_argument("run")
    s.add_argument("--out", required=True, metavar="BASE")
    s.add_argument("--version", type=int)
    s.set_defaults(fn=cmd_export)

    s = sub.add_parser("predict", help="predictions of a run or an export, as CSV (or JSON lines)")
    s.add_argument("target", help="a run dir, an export version dir (BASE/V) or an export base (its latest version)")
    s.add_argument("--data", required=True, help="rows to score; the label column is not needed")
    s.add_argument("--keep", metavar="COLS", help="comma-separated columns of the data to copy into the output "
                   "(e.g. user_id,ad_id)")
    s.add_argument("--output", help="file to write (.csv, or .json/.jsonl for JSON lines); default CSV on stdout")
    s.set_defaults(fn=cmd_predict)
    s = sub.add_parser("compress", help="a compressed copy of a run as a new run dir: int8, prune or distill "
                       "(docs/compression.md)")
    s.add_argument("run", help="a finished run (the teacher, for distill)")
    s.add_argument("--out", required=True, help="the new run dir")
    s.add_argument("--method", required=True, choices=["int8", "prune", "distill"])
    s.add_argument("--sparsity", type=float, default=0.5, help="prune: fraction of each Dense kernel zeroed (default 0.5)")
    s.add_argument("--epochs", type=int, default=1, help="prune: fine-tuning epochs (0: none); distill: student epochs")
    s.add_argument("--student", help="distill: the student spec (a file or a zoo model's name)")
    s.add_argument("--alpha", type=float, default=0.5, help="distill: weight of the hard-label loss (default 0.5)")
    s.add_argument("--temperature", type=float, default=2.0, help="distill: temperature T (default 2)")
    s.add_argument("--t-squared", action="store_true", help="distill: scale the KL term by T^2 (Hinton et al.)")
    s.add_argument("--batch-size", type=int)
    s.add_argument("--overwrite", action="store_true", help="write into an --out that holds a finished run")
    s.set_defaults(fn=cmd_compress)

    s = sub.add_parser("serving-config", help="TF Serving model config file (--model_config_file) for export bases")
    s.add_argument("bases", nargs="+", metavar="BASE", help="export bases (BASE/<version>/saved_model.pb)")
    s.add_argument("--out", required=True, help="the config file to write, e.g. models.config")
    s.add_argument("--name", action="append", metavar="NAME=BASE", help="model name of BASE (default: its folder "
                   "name); repeatable")
    s.add_argument("--labels", action="append", metavar="[MODEL:]L=V,...", help="version labels, e.g. "
                   "stable=1,canary=2 (MODEL: when there are several models); repeatable")
    s.add_argument("--policy", default="", help="latest (default), latest:N, all, or specific (the default with "
                   "--labels: load exactly the labelled versions)")
    s.add_argument("--versions", action="append", metavar="[MODEL:]V,...", help="versions for --policy specific")
    s.add_argument("--root", help="base_path prefix as the server sees it (e.g. /models in a container); "
                   "default: the absolute paths here")
    s.add_argument("--allow-unloaded-labels", action="store_true", help="let a label name a version the policy "
                   "does not load (the server needs --allow_version_labels_for_unavailable_models)")
    s.set_defaults(fn=cmd_serving_config)

    s = sub.add_parser("serve-check", help="before deploying: load an export in a TensorFlow-only process, replay "
                       "its warmup, send real rows over REST and gRPC, compare with the run's predictions")
    s.add_argument("export", help="an export base (its latest version) or a version dir BASE/V")
    s.add_argument("--run", help="recompute the reference predictions with this run (default: those recorded "
                   "at export)")
    s.add_argument("--data", help="rows to send instead of the recorded validation rows (needs --run)")
    s.add_argument("--rows", type=int, default=64, help="rows of --data to send (default 64)")
    s.set_defaults(fn=cmd_serve_check)
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    import warnings

    from kzoo.errors import DataError, SpecError

    # kzoo's own warnings (a metric left null, ...) in one line, without the source line under them.
    default_format = warnings.formatwarning
    warnings.formatwarning = lambda message, category, filename, *rest, **kw: (
        f"kzoo: warning: {message}\n" if "kzoo" in Path(filename).parts
        else default_format(message, category, filename, *rest, **kw))

    if args.command in ("train", "evaluate", "export", "predict", "diagnose", "calibrate", "compress",
                        "serving-config", "serve-check"):
        from kzoo import _quiet

        _quiet.import_tensorflow()  # the data pipeline uses tf.data on every backend

    try:
        return args.fn(args)
    except SpecError as e:
        print(str(e), file=sys.stderr)
        return 2
    except (DataError, FileNotFoundError, FileExistsError) as e:  # RunExistsError is a FileExistsError
        print(f"kzoo: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
