"""The `kzoo` command line (contract in DESIGN.md)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _quiet_tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


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
    from blocks.registry import block_types, summary

    import blocks  # noqa: F401

    print("blocks:")
    for name, cls in block_types().items():
        print(f"  {name:<18} {summary(cls)}")
    print("zoo models:")
    for path in sorted((REPO / "zoo_configs").glob("*.json")):
        desc = json.loads(path.read_text()).get("description", "")
        print(f"  {path.stem:<18} {desc}")
    return 0


def cmd_train(args) -> int:
    from kzoo.trainer import train

    out = Path(args.out or Path("runs") / Path(args.spec).stem)
    metrics = train(args.spec, args.data, out, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed)
    _print_metrics(metrics)
    print(f"run: {out}  (model.keras, metrics.json, history.csv, curves.png)")
    if args.export:
        from kzoo.exporter import export

        path = export(out, args.export)
        print(f"export: {path}  (SavedModel; serving_default takes the raw feature columns)")
    return 0


def _print_metrics(metrics: dict) -> None:
    for task, values in metrics.items():
        if isinstance(values, dict):
            shown = "  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
            print(f"{task}: {shown}")
    print(f"examples={metrics.get('examples')}  seconds={metrics.get('seconds', '-')}")


def cmd_evaluate(args) -> int:
    from kzoo.trainer import evaluate

    metrics = evaluate(args.run, args.data)
    _print_metrics(metrics)
    out = Path(args.run) / ("metrics.eval.json" if args.data else "metrics.json")
    if args.data:
        out.write_text(json.dumps(metrics, indent=2))
        print(f"wrote {out}")
    return 0


def cmd_export(args) -> int:
    from kzoo.exporter import export

    path = export(args.run, args.out, args.version)
    print(f"export: {path}")
    return 0


def cmd_predict(args) -> int:
    from kzoo.predict import predict

    frame = predict(args.target, args.data)
    if args.output and args.output.endswith(".json"):
        frame.to_json(args.output, orient="records", lines=True)
    elif args.output:
        frame.to_csv(args.output, index=False)
    else:
        frame.to_csv(sys.stdout, index=False)
    if args.output:
        print(f"wrote {len(frame)} predictions to {args.output}", file=sys.stderr)
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kzoo", description="Keras 3 recommender model zoo: JSON specs -> "
                                "trained models -> TF Serving SavedModels.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("validate", help="check specs; exit 2 with 'SPEC: <json path>: message' on stderr")
    s.add_argument("specs", nargs="+")
    s.set_defaults(fn=cmd_validate)

    s = sub.add_parser("schema", help="print the spec JSON Schema (for editor completion)")
    s.set_defaults(fn=cmd_schema)

    s = sub.add_parser("list", help="blocks and zoo models, one line each")
    s.set_defaults(fn=cmd_list)

    s = sub.add_parser("train", help="train a spec and evaluate it on the held-out split")
    s.add_argument("spec")
    s.add_argument("--data", default="synthetic",
                   help="synthetic[:ROWS] (default), criteo:PATH, avazu:PATH, or a CSV/TSV/Parquet file")
    s.add_argument("--epochs", type=int)
    s.add_argument("--batch-size", type=int)
    s.add_argument("--seed", type=int)
    s.add_argument("--out", help="run dir (default runs/<spec name>); re-running resumes an interrupted run")
    s.add_argument("--export", metavar="BASE", help="also export the trained model under BASE/<next version>")
    s.set_defaults(fn=cmd_train)

    s = sub.add_parser("evaluate", help="metrics of a run (its test split, or all rows of --data)")
    s.add_argument("run")
    s.add_argument("--data")
    s.set_defaults(fn=cmd_evaluate)

    s = sub.add_parser("export", help="SavedModel for TF Serving at BASE/VERSION")
    s.add_argument("run")
    s.add_argument("--out", required=True, metavar="BASE")
    s.add_argument("--version", type=int)
    s.set_defaults(fn=cmd_export)

    s = sub.add_parser("predict", help="predictions of a run or an export, as CSV (or JSON lines)")
    s.add_argument("target", help="a run dir or a SavedModel version dir")
    s.add_argument("--data", required=True)
    s.add_argument("--output", help="file to write (.csv or .json); default stdout")
    s.set_defaults(fn=cmd_predict)
    return p


def main(argv=None) -> int:
    _quiet_tf()
    args = parser().parse_args(argv)
    from kzoo.data import DataError
    from kzoo.spec import SpecError

    try:
        return args.fn(args)
    except SpecError as e:
        print(str(e), file=sys.stderr)
        return 2
    except (DataError, FileNotFoundError, FileExistsError) as e:
        print(f"kzoo: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
