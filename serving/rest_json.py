"""TF Serving's REST JSON <-> PredictRequest/PredictResponse conversion, as serving/testing_server.py uses it.

Follows TF Serving's own rules (json_tensor.cc, predict_util.cc): row ("instances") and columnar
("inputs") formats, typed leaves, and its error messages.
"""

from __future__ import annotations

import base64
import json
import math

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import predict_pb2


class ServingFailure(Exception):
    """A request TF Serving would refuse: a gRPC status code and TF Serving's message."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def _invalid(message: str) -> ServingFailure:
    return ServingFailure(grpc.StatusCode.INVALID_ARGUMENT, message)


def _type_name(enum: int) -> str:
    """TensorFlow's DataTypeString: DT_FLOAT -> 'float', DT_INT64 -> 'int64'."""
    return types_pb2.DataType.Name(enum)[3:].lower()


def _json_leaf(value, dtype: int):
    """Check one JSON value against a dtype as TF Serving's json_tensor.cc does."""
    name = _type_name(dtype)
    if isinstance(value, dict) and dtype == types_pb2.DT_STRING and set(value) == {"b64"}:
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (ValueError, TypeError):
            raise _invalid("Unable to base64 decode") from None
    kind = {dict: "Object", list: "Array", str: "String", bool: "True" if value else "False",
            type(None): "Null"}.get(type(value), "Number")
    wrong = _invalid(f"JSON Value: {json.dumps(value)} Type: {kind} is not of expected type: {name}")
    if dtype == types_pb2.DT_STRING:
        if not isinstance(value, str):
            raise wrong
        return value.encode()
    if dtype == types_pb2.DT_BOOL:
        if not isinstance(value, bool):
            raise wrong
        return value
    if kind != "Number":
        raise wrong
    if dtype in (types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE):
        info = np.finfo(np.float32 if dtype == types_pb2.DT_FLOAT else np.float64)
        exact = (1 << info.nmant + 1) - 1  # the largest integer the type holds exactly
        if abs(value) > exact if isinstance(value, int) else math.isfinite(value) and abs(value) > info.max:
            raise _invalid(f"Cannot convert JSON value: {value} to {name} without loss of precision.")
        return value
    info = np.iinfo(tf.dtypes.as_dtype(dtype).as_numpy_dtype)
    if not isinstance(value, int) or not info.min <= value <= info.max:
        raise wrong
    return value


def _json_tensor(value, dtype: int) -> np.ndarray:
    def walk(v):
        return [walk(x) for x in v] if isinstance(v, list) else _json_leaf(v, dtype)

    leaves = walk(value)
    np_dtype = object if dtype == types_pb2.DT_STRING else tf.dtypes.as_dtype(dtype).as_numpy_dtype
    try:
        return np.array(leaves, dtype=np_dtype)
    except ValueError:
        raise _invalid(f"JSON Value: {json.dumps(value)[:200]} is not a dense (rectangular) list") from None


def request_from_json(body: dict, model, name: str, version: str | None):
    """A TF Serving REST predict body -> (PredictRequest, 'row' | 'columnar'), with its checks."""
    if not isinstance(body, dict):
        raise _invalid("JSON Value: body Is not object")
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    if version is not None:
        request.model_spec.version.value = int(version)
    signature_name = body.get("signature_name", "")
    if not isinstance(signature_name, str):
        raise _invalid("'signature_name' key must be a string value.")
    request.model_spec.signature_name = signature_name
    model.check_spec(request.model_spec)
    _, sig = model.signature(signature_name)
    dtypes = {k: v.dtype for k, v in sig.inputs.items()}
    if "instances" in body and "inputs" in body:
        raise _invalid("Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist")
    if "instances" in body:
        tensors, kind = _from_instances(body["instances"], dtypes), "row"
    elif "inputs" in body:
        tensors, kind = _from_inputs(body["inputs"], dtypes), "columnar"
    else:
        raise _invalid("Missing 'inputs' or 'instances' key")
    for key, array in tensors.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(array, dtype=tf.dtypes.as_dtype(dtypes[key])))
    return request, kind


def _is_object(value) -> bool:
    return isinstance(value, dict) and set(value) != {"b64"}


def _from_instances(instances, dtypes: dict) -> dict:
    if not isinstance(instances, list):
        raise _invalid("Excepting 'instances' to be an list/array")
    if not instances:
        raise _invalid("No values in 'instances' array")
    if not _is_object(instances[0]):
        if len(dtypes) > 1:
            raise _invalid("instances is a plain list, but expecting list of objects as multiple input tensors "
                           "required as per tensorinfo_map")
        (only,) = dtypes
        return {only: _json_tensor(instances, dtypes[only])}
    names = sorted(dtypes)
    values = {k: [] for k in names}
    for i, item in enumerate(instances):
        if not _is_object(item):
            raise _invalid(f"Expecting object but got list at item {i} of input list")
        for key, value in item.items():  # TF Serving converts key by key, then compares the key sets
            try:
                if key not in dtypes:
                    raise _invalid(f"JSON object: does not have named input: {key}")
                values[key].append(_json_tensor(value, dtypes[key]))
            except ServingFailure as err:
                raise _invalid(f"Failed to process element: {i} key: {key} of 'instances' list. "
                               f"Error: INVALID_ARGUMENT: {err.message}") from None
        if sorted(item) != names:
            raise _invalid(f"Failed to process element: {i} of 'instances' list. JSON object: "
                           f"{json.dumps(item)[:300]} must only have keys: {','.join(names)}")
    out = {}
    for key in names:
        shapes = {v.shape for v in values[key]}
        if len(shapes) > 1:
            raise _invalid(f"input {key}: the instances hold values of different shapes {sorted(shapes)}")
        out[key] = np.stack(values[key])
    return out


def _from_inputs(inputs, dtypes: dict) -> dict:
    if not _is_object(inputs):
        if len(dtypes) > 1:
            raise _invalid("inputs is a plain value/list, but expecting an object as multiple input tensors "
                           "required as per tensorinfo_map")
        (only,) = dtypes
        return {only: _json_tensor(inputs, dtypes[only])}
    out = {}
    for key, dtype in dtypes.items():  # like TF Serving, keys not in the signature are ignored
        if key not in inputs:
            raise _invalid(f"Missing named input: {key} in 'inputs' object.")
        out[key] = _json_tensor(inputs[key], dtype)
    return out


def _json_values(proto):
    array = tf.make_ndarray(proto)
    if array.dtype == np.float32:
        # TF Serving writes a float32 with the shortest digits that read back to it (0.1, not 0.100000001).
        return np.array([float(str(v)) for v in array.ravel()], dtype=object).reshape(array.shape).tolist()
    if array.dtype == object:
        return np.vectorize(lambda b: b.decode(errors="replace"), otypes=[object])(array).tolist()
    return array.tolist()


def json_from_response(response, kind: str) -> dict:
    """PredictResponse -> TF Serving's JSON: {"predictions": [...]} (row) or {"outputs": ...} (columnar)."""
    values = {k: _json_values(v) for k, v in sorted(response.outputs.items())}
    if kind == "columnar":
        return {"outputs": values if len(values) > 1 else next(iter(values.values()))}
    rows = len(next(iter(values.values())))
    if len(values) == 1:
        return {"predictions": next(iter(values.values()))}
    return {"predictions": [{k: v[i] for k, v in values.items()} for i in range(rows)]}
