"""A protocol-true stand-in for TF Serving, for tests and local demos. This is NOT TF Serving.

It speaks TF Serving's two protocols on 127.0.0.1 and nothing else:

- gRPC: `tensorflow.serving.PredictionService` `Predict` and `GetModelMetadata`, with the
  real `tensorflow_serving.apis` messages;
- REST: `POST /v1/models/NAME[/versions/V]:predict` in the row ("instances" ->
  "predictions") and columnar ("inputs" -> "outputs") formats, `GET /v1/models/NAME[/versions/V]`
  (status) and `GET .../metadata`, with TF Serving's JSON rules and error bodies.

What it checks, as TF Serving does: the model base dir layout (BASE/<version>/ with the
highest purely numeric folder served; anything else, such as an export's `.tmp-3-123`, is
ignored); the model name and version of each request; the signature name; the input names
(missing or extra inputs are INVALID_ARGUMENT) and each input's dtype against the SignatureDef
(TF Serving converts nothing: an int64 tensor for a float32 input is INVALID_ARGUMENT); the
JSON value types per declared dtype (a `3.0` is not an int64, NaN is accepted); and it
replays `assets.extra/tf_serving_warmup_requests` (a TFRecord of PredictionLog) at load,
refusing to serve a model whose warmup fails.

What it does not do: it runs the SavedModel's `serving_default` with TensorFlow in this
Python process (`tf.saved_model.load`), not TF Serving's C++ session; it loads once at start
(no polling for new versions, no version policies or labels, no model config file, no
batching, no monitoring) and serves one model. A SavedModel that TF Serving's build cannot
run (e.g. ops missing from its kernels) can still pass here. Run the real server before
production: see docs/serving.md.

    with serve("exports/", "kzoo") as server:
        GrpcClient(server.grpc_target, "kzoo", "exports/").predict(rows)

    python -m kzoo.serving.testing_server exports/dcn_v2 --model-name kzoo --grpc-port 8500 --rest-port 8501
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import signal
import sys
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import (get_model_metadata_pb2, predict_pb2, prediction_log_pb2,
                                     prediction_service_pb2_grpc)

from kzoo.serving.client import latest_version_dir
from kzoo.serving.rest_json import ServingFailure, _invalid, _type_name, json_from_response, request_from_json

HOST = "127.0.0.1"
DEFAULT_SIGNATURE = "serving_default"
WARMUP_FILE = "tf_serving_warmup_requests"
MAX_WARMUP_RECORDS = 1000  # TF Serving's limit
# TF Serving's mapping of status codes to HTTP (http_server.cc).
HTTP_STATUS = {"INVALID_ARGUMENT": 400, "FAILED_PRECONDITION": 400, "OUT_OF_RANGE": 400, "NOT_FOUND": 404,
               "UNIMPLEMENTED": 501, "UNAVAILABLE": 503, "RESOURCE_EXHAUSTED": 429}
_REST_PATH = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
                        r"(?P<verb>/metadata|:predict|:classify|:regress)?$")


class LoadedModel:
    """The latest version under BASE (or the SavedModel folder `path`, e.g. an export's temporary
    folder before it is published: version 0 unless its name is a number), loaded, its SignatureDefs
    read and its warmup replayed; `warmup_responses` keeps the PredictResponses of the warmup.

    `functions` ({signature name: fn(**inputs) -> outputs}) runs those instead of loading the
    SavedModel's own: the exporter replays the warmup on the functions it has just written, in memory.
    """

    def __init__(self, base, name: str, path=None, functions: dict | None = None):
        self.base, self.name = Path(base), name
        self.path = Path(path) if path is not None else latest_version_dir(self.base)
        self.version = int(self.path.name) if self.path.name.isdigit() else 0
        self.warmup_responses: list = []
        saved = saved_model_pb2.SavedModel.FromString((self.path / "saved_model.pb").read_bytes())
        self.signature_defs = dict(saved.meta_graphs[0].signature_def)
        self.module = tf.saved_model.load(str(self.path)) if functions is None else None
        self.functions = dict(functions) if functions is not None else dict(self.module.signatures)
        self.warmup_replayed = self._warm_up()

    def _warm_up(self) -> int:
        path = self.path / "assets.extra" / WARMUP_FILE
        if not path.is_file():
            return 0
        count = 0
        for record in tf.data.TFRecordDataset(str(path)):
            count += 1
            if count > MAX_WARMUP_RECORDS:
                raise RuntimeError(f"{path}: number of warmup records exceeds the maximum ({MAX_WARMUP_RECORDS})")
            log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
            kind = log.WhichOneof("log_type")
            if kind != "predict_log":
                raise RuntimeError(f"{path}: record {count}: unsupported log_type for warmup here: {kind}")
            try:  # like TF Serving, the warmup request runs on the session: its model_spec is not matched
                self.warmup_responses.append(self.predict(log.predict_log.request, check_spec=False))
            except ServingFailure as err:
                raise RuntimeError(f"failed to warm up model {self.path}: record {count}: {err.message}") from None
        return count

    def check_spec(self, spec) -> None:
        version = spec.version.value if spec.HasField("version") else None
        if spec.version_label:
            raise _invalid(f"Unrecognized servable version label: {spec.version_label}")
        wanted = f"Latest({spec.name})" if version is None else f"Specific({spec.name}, {version})"
        if spec.name != self.name or (version is not None and version != self.version):
            raise ServingFailure(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: {wanted}")

    def signature(self, name: str):
        name = name or DEFAULT_SIGNATURE
        if name not in self.signature_defs:
            raise ServingFailure(grpc.StatusCode.FAILED_PRECONDITION, f'Serving signature key "{name}" not found.')
        return name, self.signature_defs[name]

    def predict(self, request, check_spec: bool = True):
        """PredictRequest -> PredictResponse, with TF Serving's checks (predict_util.cc)."""
        if check_spec:
            self.check_spec(request.model_spec)
        sig_name, sig = self.signature(request.model_spec.signature_name)
        sent, expected = set(request.inputs), set(sig.inputs)
        if len(sent) != len(expected):
            raise _invalid(f"input size does not match signature: {len(sent)}!={len(expected)} "
                           f"len({{{','.join(sorted(sent))}}}) != len({{{','.join(sorted(expected))}}}). "
                           f"Sent extra: {{{','.join(sorted(sent - expected))}}}. "
                           f"Missing but required: {{{','.join(sorted(expected - sent))}}}.")
        for alias in sorted(sent - expected):
            raise _invalid(f"input tensor alias not found in signature: {alias}. "
                           f"Inputs expected to be in the set {{{','.join(sorted(expected))}}}.")
        feed = {}
        for i, alias in enumerate(sorted(expected)):
            proto, want = request.inputs[alias], sig.inputs[alias].dtype
            if proto.dtype != want:
                raise _invalid(f"Expects arg[{i}] to be {_type_name(want)} but {_type_name(proto.dtype)} is provided")
            try:
                feed[alias] = tf.constant(tf.make_ndarray(proto), dtype=tf.dtypes.as_dtype(want))
            except (TypeError, ValueError) as err:
                raise _invalid(f"input {alias}: {err}") from None
        outputs = list(request.output_filter) or sorted(sig.outputs)
        for alias in outputs:
            if alias not in sig.outputs:
                raise _invalid(f"output tensor alias not found in signature: {alias} Outputs expected to be in "
                               f"the set {{{','.join(sorted(sig.outputs))}}}.")
        try:
            result = self.functions[sig_name](**feed)
        except (tf.errors.InvalidArgumentError, ValueError, TypeError) as err:
            raise _invalid(str(getattr(err, "message", err)).strip()) from None
        response = predict_pb2.PredictResponse()
        self._fill_spec(response.model_spec, sig_name)
        for alias in outputs:
            response.outputs[alias].CopyFrom(tf.make_tensor_proto(result[alias].numpy()))
        return response

    def metadata(self, request):
        """GetModelMetadataRequest -> GetModelMetadataResponse (only the 'signature_def' field exists)."""
        self.check_spec(request.model_spec)
        if not request.metadata_field:
            raise _invalid("GetModelMetadataRequest must specify at least one metadata_field")
        for field in request.metadata_field:
            if field != "signature_def":
                raise _invalid(f"Metadata field {field} is not supported")
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        self._fill_spec(response.model_spec, "")
        defs = get_model_metadata_pb2.SignatureDefMap()
        for key, value in self.signature_defs.items():
            defs.signature_def[key].CopyFrom(value)
        response.metadata["signature_def"].Pack(defs)
        return response

    def _fill_spec(self, spec, signature_name: str) -> None:
        spec.name = self.name
        spec.version.value = self.version
        spec.signature_name = signature_name


class _PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, model: LoadedModel):
        self.model = model

    def Predict(self, request, context):
        return self._answer(self.model.predict, request, context)

    def GetModelMetadata(self, request, context):
        return self._answer(self.model.metadata, request, context)

    def _answer(self, method, request, context):
        try:
            return method(request)
        except ServingFailure as err:
            context.abort(err.code, err.message)


class _RestHandler(BaseHTTPRequestHandler):
    server_version = "kzoo-testing-server"

    def do_GET(self):
        self._route("GET")

    def do_POST(self):
        self._route("POST")

    def _route(self, method: str) -> None:
        model: LoadedModel = self.server.model
        match = _REST_PATH.match(self.path.split("?")[0])
        try:
            if not match or match["label"] or (method, match["verb"]) not in {
                    ("GET", None), ("GET", "/metadata"), ("POST", ":predict")}:
                raise ServingFailure(grpc.StatusCode.NOT_FOUND, f"Malformed request: {method} {self.path}")
            name, version = match["name"], match["version"]
            if method == "POST":
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    body = json.loads(self.rfile.read(length) or b"null")
                except ValueError as err:
                    raise _invalid(f"JSON Parse error: {err}") from None
                request, kind = request_from_json(body, model, name, version)
                answer = json_from_response(model.predict(request), kind)
            elif match["verb"] == "/metadata":
                request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
                request.model_spec.name = name
                if version is not None:
                    request.model_spec.version.value = int(version)
                answer = json_format.MessageToDict(model.metadata(request), preserving_proto_field_name=True)
            else:
                answer = self._status(model, name, version)
            self._send(200, answer)
        except ServingFailure as err:
            self._send(HTTP_STATUS.get(err.code.name, 500), {"error": err.message})

    @staticmethod
    def _status(model: LoadedModel, name: str, version: str | None) -> dict:
        if name != model.name:
            raise ServingFailure(grpc.StatusCode.NOT_FOUND, f"Could not find any versions of model {name}")
        if version is not None and int(version) != model.version:
            raise ServingFailure(grpc.StatusCode.NOT_FOUND, f"Could not find version {version} of model {name}")
        return {"model_version_status": [{"version": str(model.version), "state": "AVAILABLE",
                                          "status": {"error_code": "OK", "error_message": ""}}]}

    def _send(self, status: int, answer: dict) -> None:
        data = json.dumps(answer, indent=1).encode()  # NaN stays the literal NaN, as TF Serving writes it
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, fmt, *args):
        if self.server.verbose:
            super().log_message(fmt, *args)


class TestingServer:
    """One model from BASE on 127.0.0.1: gRPC on `grpc_port`, REST on `rest_port` (0: a free port)."""

    __test__ = False  # not a pytest class

    def __init__(self, base, model_name: str = "kzoo", grpc_port: int = 0, rest_port: int = 0,
                 verbose: bool = False):
        self.model = LoadedModel(base, model_name)
        self._grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=8),
                                 options=[("grpc.max_receive_message_length", -1),
                                          ("grpc.max_send_message_length", -1),
                                          ("grpc.so_reuseport", 0)])
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(_PredictionService(self.model), self._grpc)
        try:
            self.grpc_port = self._grpc.add_insecure_port(f"{HOST}:{grpc_port}")
        except RuntimeError:
            self.grpc_port = 0
        if not self.grpc_port:
            raise OSError(f"cannot bind gRPC to {HOST}:{grpc_port} (port in use?)")
        self._http = ThreadingHTTPServer((HOST, rest_port), _RestHandler)
        self._http.daemon_threads = True
        self._http.model, self._http.verbose = self.model, verbose
        self.rest_port = self._http.server_address[1]
        self._thread = threading.Thread(target=self._http.serve_forever, name="kzoo-rest", daemon=True)

    @property
    def grpc_target(self) -> str:
        return f"{HOST}:{self.grpc_port}"

    @property
    def rest_url(self) -> str:
        return f"http://{HOST}:{self.rest_port}"

    def start(self) -> "TestingServer":
        self._grpc.start()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._http.shutdown()
        self._http.server_close()
        self._grpc.stop(grace=None).wait()


@contextlib.contextmanager
def serve(base, model_name: str = "kzoo", grpc_port: int = 0, rest_port: int = 0, verbose: bool = False):
    """Serve BASE's latest version while the block runs; yields the server (.grpc_port, .rest_port)."""
    server = TestingServer(base, model_name, grpc_port, rest_port, verbose).start()
    try:
        yield server
    finally:
        server.stop()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kzoo.serving.testing_server",
                                     description="A protocol-true stand-in for TF Serving (NOT TF Serving), "
                                                 "for tests and local demos; binds 127.0.0.1 only.")
    parser.add_argument("base", help="model base dir: BASE/<version>/saved_model.pb")
    parser.add_argument("--model-name", default="kzoo")
    parser.add_argument("--grpc-port", type=int, default=8500)
    parser.add_argument("--rest-port", type=int, default=8501)
    parser.add_argument("--quiet", action="store_true", help="do not log REST requests")
    args = parser.parse_args(argv)
    try:
        server = TestingServer(args.base, args.model_name, args.grpc_port, args.rest_port, not args.quiet).start()
    except (OSError, RuntimeError) as err:
        print(f"testing_server: {err}", file=sys.stderr)
        return 1
    m = server.model
    print(f"serving {m.name} version {m.version} from {m.path} (warmup: {m.warmup_replayed} request(s) replayed)\n"
          f"  gRPC {server.grpc_target}   REST {server.rest_url}/v1/models/{m.name}\n"
          "  (kzoo testing server, NOT TF Serving; Ctrl-C stops)", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
