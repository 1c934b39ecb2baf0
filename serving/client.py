"""Clients for a model served by TF Serving: REST (standard library only) and gRPC.

    client = RestClient("http://localhost:8501", "kzoo", signature="exports/")
    client.predict(rows)                      # -> {"ctr": np.ndarray([...], float32)}
    client = GrpcClient("localhost:8500", "kzoo", signature="exports/")

`rows` is a list of dicts, a DataFrame or a dict of columns holding the raw features.
Every value is cast to the dtype that the SavedModel's `serving_default` declares before it
is sent: TF Serving does not convert (an int64 tensor against a float32 input is an
INVALID_ARGUMENT, and a JSON `3.0` is not an int64). The declared dtypes come from
`signature`: an export dir (BASE or BASE/VERSION; its `assets.extra/kzoo.json`, else its
`saved_model.pb`), a `kzoo.json`-style dict (`{"inputs": {name: dtype}, "tasks": [...]}`),
a plain `{name: dtype}` dict, or None to ask the server for the model's metadata.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kzoo.serving.requests import columns, grpc_request, rest_body

SIGNATURE = "serving_default"
_VERSION_DIR = re.compile(r"^\d+$")


class ServingError(RuntimeError):
    """The server answered with an error. `code` is the gRPC status name or the HTTP status."""

    def __init__(self, message: str, code=None):
        super().__init__(message)
        self.code = code


class ServerUnreachable(ConnectionError):
    """No server answered at the address (wrong host/port, or it is not running yet)."""


@dataclass
class Signature:
    """What a client needs to know about `serving_default`: input dtypes and output names."""

    inputs: dict[str, str]
    outputs: list[str] = field(default_factory=list)


def version_dirs(base: Path) -> list[Path]:
    """The folders of BASE TF Serving treats as versions: purely numeric names."""
    return [p for p in base.iterdir() if p.is_dir() and _VERSION_DIR.match(p.name)] if base.is_dir() else []


def latest_version_dir(base: Path) -> Path:
    """BASE/<highest purely numeric folder>, the version TF Serving's default policy serves."""
    versions = version_dirs(base)
    if not versions:
        raise FileNotFoundError(f"{base} holds no numeric version folder (BASE/1/saved_model.pb, ...)")
    return max(versions, key=lambda p: int(p.name))


def signature_from_defs(signature_def) -> Signature:
    """A Signature from a tensorflow.SignatureDef proto (saved_model.pb or GetModelMetadata)."""
    import tensorflow as tf

    return Signature({k: tf.dtypes.as_dtype(v.dtype).name for k, v in signature_def.inputs.items()},
                     sorted(signature_def.outputs))


def read_signature_def(export_dir: Path, name: str = SIGNATURE):
    """The SignatureDef proto stored in EXPORT_DIR/saved_model.pb, read without loading the model."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel.FromString((export_dir / "saved_model.pb").read_bytes())
    defs = saved.meta_graphs[0].signature_def
    if name not in defs:
        raise KeyError(f"{export_dir}: no signature '{name}'; it has {sorted(defs)}")
    return defs[name]


def load_signature(source) -> Signature:
    """A Signature from an export dir, a kzoo.json-style dict, a {name: dtype} dict or a Signature."""
    if isinstance(source, Signature):
        return source
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not (path / "saved_model.pb").is_file():
            path = latest_version_dir(path)
        meta = path / "assets.extra" / "kzoo.json"
        if meta.is_file():
            return load_signature(json.loads(meta.read_text()))
        return signature_from_defs(read_signature_def(path))
    if isinstance(source, dict):
        if "inputs" in source and isinstance(source["inputs"], dict):
            return Signature(dict(source["inputs"]), list(source.get("tasks") or []))
        return Signature({k: getattr(v, "dtype", v).name if hasattr(v, "dtype") else str(v)
                          for k, v in source.items()})
    raise TypeError(f"signature must be an export dir, a dict or a Signature, got {type(source).__name__}")


class _Client:
    def __init__(self, model_name: str, signature, version: int | None, timeout: float):
        self.model_name = model_name
        self.version = None if version is None else int(version)
        self.timeout = timeout
        self._signature = None if signature is None else load_signature(signature)

    @property
    def signature(self) -> Signature:
        if self._signature is None:
            self._signature = self.fetch_signature()
        return self._signature

    def fetch_signature(self) -> Signature:
        raise NotImplementedError

    def columns(self, rows) -> dict[str, np.ndarray]:
        """The rows as the typed columns that will be sent (useful to check a request offline)."""
        return columns(rows, self.signature.inputs)


class RestClient(_Client):
    """TF Serving's REST API: POST {base_url}/v1/models/NAME[/versions/V]:predict."""

    def __init__(self, base_url: str, model_name: str = "kzoo", signature=None, *, version: int | None = None,
                 columnar: bool = True, timeout: float = 30.0):
        super().__init__(model_name, signature, version, timeout)
        self.base_url = base_url.rstrip("/")
        if "://" not in self.base_url:
            self.base_url = "http://" + self.base_url
        self.columnar = columnar

    @property
    def model_url(self) -> str:
        url = f"{self.base_url}/v1/models/{self.model_name}"
        return url if self.version is None else f"{url}/versions/{self.version}"

    def predict(self, rows, columnar: bool | None = None) -> dict[str, np.ndarray]:
        """Predictions per output name, one value per row."""
        columnar = self.columnar if columnar is None else columnar
        body = rest_body(rows, self.signature.inputs, columnar=columnar)
        answer = self._call("POST", f"{self.model_url}:predict", body)
        return self._parse(answer)

    def status(self) -> dict:
        """GET /v1/models/NAME[/versions/V]: {"model_version_status": [{"version", "state", ...}]}."""
        return self._call("GET", self.model_url)

    def metadata(self) -> dict:
        """GET /v1/models/NAME[/versions/V]/metadata: the served SignatureDefs as JSON."""
        return self._call("GET", f"{self.model_url}/metadata")

    def fetch_signature(self) -> Signature:
        sig = self.metadata()["metadata"]["signature_def"]["signature_def"][SIGNATURE]
        dtypes = {"DT_FLOAT": "float32", "DT_DOUBLE": "float64", "DT_INT32": "int32", "DT_INT64": "int64",
                  "DT_STRING": "string"}
        return Signature({k: dtypes[v["dtype"]] for k, v in sig["inputs"].items()}, sorted(sig["outputs"]))

    def _parse(self, answer: dict) -> dict[str, np.ndarray]:
        # TF Serving names the outputs only when there are several: with one output,
        # "outputs" is the bare list and "predictions" a list of bare values.
        if "outputs" in answer:
            out = answer["outputs"]
            named = out if isinstance(out, dict) else {self._single_output(): out}
        elif "predictions" in answer:
            preds = answer["predictions"]
            if preds and isinstance(preds[0], dict):
                named = {k: [p[k] for p in preds] for k in preds[0]}
            else:
                named = {self._single_output(): preds}
        else:
            raise ServingError(f"{self.model_url}: answer has neither 'outputs' nor 'predictions': "
                               f"{str(answer)[:300]}")
        return {k: _array(v) for k, v in named.items()}

    def _single_output(self) -> str:
        if len(self.signature.outputs) != 1:
            self._signature = self.fetch_signature()  # a hand-written signature without output names
        return self.signature.outputs[0]

    def _call(self, method: str, url: str, body: dict | None = None) -> dict:
        # allow_nan: a missing numeric travels as NaN, which TF Serving's JSON parser accepts.
        data = None if body is None else json.dumps(body, allow_nan=True).encode()
        request = urllib.request.Request(url, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as reply:
                return json.loads(reply.read())
        except urllib.error.HTTPError as err:
            text = err.read().decode(errors="replace")
            try:
                message = json.loads(text).get("error", text)
            except (ValueError, AttributeError):
                message = text
            raise ServingError(f"{method} {url} -> HTTP {err.code}: {message}", code=err.code) from None
        except (urllib.error.URLError, ConnectionError, TimeoutError) as err:
            reason = getattr(err, "reason", err)
            if isinstance(reason, TimeoutError):
                raise ServingError(f"{method} {url}: no answer within {self.timeout}s", code="timeout") from None
            raise ServerUnreachable(f"cannot reach TF Serving at {url}: {reason} "
                                    f"(is the server running, with its REST API on that port?)") from None


class GrpcClient(_Client):
    """TF Serving's gRPC PredictionService (port 8500 by convention)."""

    def __init__(self, target: str, model_name: str = "kzoo", signature=None, *, version: int | None = None,
                 timeout: float = 30.0, options=None):
        import grpc
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        super().__init__(model_name, signature, version, timeout)
        self.target = target
        # TF Serving accepts large requests; gRPC's 4 MiB default would cap the batch size.
        options = options or [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
        self.channel = grpc.insecure_channel(target, options=options)
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def request(self, rows):
        """The PredictRequest that predict() sends."""
        request = grpc_request(rows, self.signature.inputs, model_name=self.model_name, signature_name=SIGNATURE)
        if self.version is not None:
            request.model_spec.version.value = self.version
        return request

    def predict(self, rows) -> dict[str, np.ndarray]:
        """Predictions per output name, one value per row."""
        import tensorflow as tf

        response = self._call("Predict", self.request(rows))
        return {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}

    def metadata(self):
        """GetModelMetadataResponse with the served SignatureDefMap."""
        from tensorflow_serving.apis import get_model_metadata_pb2

        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        request.model_spec.name = self.model_name
        if self.version is not None:
            request.model_spec.version.value = self.version
        return self._call("GetModelMetadata", request)

    def fetch_signature(self) -> Signature:
        from tensorflow_serving.apis import get_model_metadata_pb2

        defs = get_model_metadata_pb2.SignatureDefMap()
        self.metadata().metadata["signature_def"].Unpack(defs)
        return signature_from_defs(defs.signature_def[SIGNATURE])

    def _call(self, method: str, request):
        import grpc

        try:
            return getattr(self.stub, method)(request, timeout=self.timeout)
        except grpc.RpcError as err:
            code = err.code()
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) and \
                    not self._reachable():
                raise ServerUnreachable(f"cannot reach TF Serving gRPC at {self.target}: {err.details()} "
                                        "(is the server running, and is that its gRPC port?)") from None
            raise ServingError(f"{method} on {self.target} ({self.model_name}) -> {code.name}: {err.details()}",
                               code=code.name) from None

    def _reachable(self) -> bool:
        import grpc

        try:
            grpc.channel_ready_future(self.channel).result(timeout=0.5)
            return True
        except grpc.FutureTimeoutError:
            return False


def _array(values) -> np.ndarray:
    # JSON drops the dtype. TF Serving writes a float32 with the shortest digits that read
    # back to the same float32 (and whole numbers as `1.0`), so float32 recovers the value.
    array = np.asarray(values)
    return array.astype(np.float32) if array.dtype == np.float64 else array
