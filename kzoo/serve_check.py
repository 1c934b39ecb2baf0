"""The reference a served export is compared with in `kzoo serve-check` (kzoo.serving.check): the
rows and the predictions the export recorded, or `kzoo.predict(run, rows)` now. Kept apart from
kzoo.serving so that the serving modules never import kzoo's data or model code.

    report = serve_check("exports/dcn_v2")      # then kzoo.serving.check.table(report), passed(report)
"""

from __future__ import annotations

import json
from pathlib import Path

from kzoo.serving.check import WARMUP_ROWS_FILE, CheckError, resolve_export, run_checks
from kzoo.serving.requests import json_values


def reference(version: Path, run=None, data=None, rows: int = 64) -> dict:
    """{"inputs": columns, "expected": {output: values} or {}, "source": words} for the checks."""
    meta = json.loads((version / "assets.extra" / "kzoo.json").read_text())
    recorded_path = version / "assets.extra" / WARMUP_ROWS_FILE
    recorded = json.loads(recorded_path.read_text()) if recorded_path.is_file() else None
    if data is not None:
        if run is None:
            raise CheckError("--data needs --run: the run's model gives the predictions to compare with")
        from kzoo import data as kdata
        from kzoo.serving.requests import columns

        raw = kdata.load(data)[0].head(rows).reset_index(drop=True)
        frame = kdata.conform(raw, meta["dataset"], require_label=False)
        inputs = {k: json_values(v) for k, v in columns(frame, meta["inputs"]).items()}
        source = f"first {len(raw)} rows of {data}"
    elif recorded is not None:
        inputs, source = recorded["inputs"], recorded["source"]
    else:
        why = meta.get("warmup", {}).get("source", "an export made before warmup rows were recorded")
        raise CheckError(f"{version}: the export recorded no real rows ({why}); pass --run RUN --data DATA "
                         "to check it on rows of DATA")
    if run is not None:
        import pandas as pd

        from kzoo.predict import predict

        if "towers" in meta:
            raise CheckError("--run: a retrieval run's predictions are not item lists; check a retrieval export "
                             "without --run (its answers are compared with the SavedModel called directly)")
        frame = pd.DataFrame(inputs)
        # The export takes only the features its graph uses; the run's data schema lists them all.
        # The unused ones are sent as missing: they cannot change a prediction.
        for feature in meta["dataset"]["features"]:
            if feature["name"] not in frame.columns:
                frame[feature["name"]] = None
        frame = predict(run, frame)
        return {"inputs": inputs, "expected": {k: json_values(frame[k]) for k in frame.columns},
                "source": source, "reference": f"kzoo.predict({run}) now"}
    expected = (recorded or {}).get("expected") or {}
    return {"inputs": inputs, "expected": expected, "source": source,
            "reference": "the run's predictions recorded at export" if expected else
            "the SavedModel called directly (this export recorded no run predictions: retrieval)"}


def serve_check(export, run=None, data=None, rows: int = 64, model_name: str = "kzoo") -> dict:
    """`kzoo serve-check`: the export's checks against its reference (see kzoo.serving.check)."""
    version = resolve_export(export)
    return run_checks(version, reference(version, run, data, rows), model_name)
