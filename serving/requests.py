"""Build TF Serving Predict requests from raw feature rows, with the signature's dtypes.

The dtypes are declared on purpose: TF Serving rejects an int64 tensor against an int32
input, and JSON numbers carry no dtype, so every value is cast to what the SavedModel's
`serving_default` declares before it is sent.
"""

from __future__ import annotations

import math

import numpy as np

from kzoo.columns import raw_column


def _dtype_name(spec) -> str:
    """'float32', 'int64', 'string' from a TensorSpec, a tf/NumPy dtype or a dtype name."""
    spec = getattr(spec, "dtype", spec)
    if isinstance(spec, str):
        return spec
    name = getattr(spec, "name", None)
    return name if isinstance(name, str) else np.dtype(spec).name


def columns(rows, signature: dict) -> dict[str, np.ndarray]:
    """Rows (list of dicts, a DataFrame, or a dict of columns) -> typed NumPy columns per input.

    Values become what training fed the preprocessing (one conversion, kzoo.columns),
    so a served row and a training row with the same raw values get the same prediction:
    numerics -> float NaN for missing (None, "", "nan", "null", ...); strings -> "" for missing,
    whole floats without ".0" (260.0 -> "260"); int64 ids -> -1 for missing.
    """
    if hasattr(rows, "to_dict") and hasattr(rows, "columns"):
        rows = {c: rows[c].to_numpy() for c in rows.columns}
    if isinstance(rows, list):
        missing = sorted({k for k in signature if any(k not in r for r in rows)})
        if missing:
            raise ValueError(f"rows lack inputs {missing}; the model takes {sorted(signature)}")
        rows = {k: [r[k] for r in rows] for k in signature}
    out = {}
    for name, spec in signature.items():
        if name not in rows:
            raise ValueError(f"input '{name}' is missing; the model takes {sorted(signature)}")
        out[name] = raw_column(rows[name], _dtype_name(spec), name)
    return out


def json_values(values) -> list:
    """A column as strict-JSON values: a missing numeric (NaN) becomes null (kzoo_warmup.json, serve-check)."""
    return [None if isinstance(v, float) and math.isnan(v) else v for v in np.asarray(values).tolist()]


def placeholder_rows(signature: dict, n: int) -> dict[str, np.ndarray]:
    """n neutral rows (0.0, 0, empty strings), e.g. for warmup requests."""
    return columns({k: [0 if _dtype_name(s) != "string" else "" for _ in range(n)] for k, s in signature.items()},
                   signature)


def grpc_request(rows, signature: dict, model_name: str = "kzoo", signature_name: str = "serving_default"):
    """A tensorflow_serving.apis.predict_pb2.PredictRequest holding the rows as typed tensors."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    for name, values in columns(rows, signature).items():
        dtype = _dtype_name(signature[name])
        tensor = tf.make_tensor_proto(values.tolist() if dtype == "string" else values,
                                      dtype=getattr(tf, dtype), shape=[len(values)])
        request.inputs[name].CopyFrom(tensor)
    return request


def rest_body(rows, signature: dict, columnar: bool = True) -> dict:
    """A TF Serving REST predict body: columnar {"inputs": {...}} or row {"instances": [...]}."""
    # A missing numeric stays NaN: TF Serving's JSON parser accepts the NaN literal, and the
    # exported preprocessing fills it exactly as training did.
    cols = {k: v.tolist() for k, v in columns(rows, signature).items()}
    if columnar:
        return {"signature_name": "serving_default", "inputs": cols}
    n = len(next(iter(cols.values())))
    return {"signature_name": "serving_default", "instances": [{k: v[i] for k, v in cols.items()} for i in range(n)]}
