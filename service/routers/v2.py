"""The Open Inference Protocol (KServe v2, Triton's HTTP/REST flavour) next to the service's own endpoints.

Three models are served: `<name>` (the classifier), `<name>-saliency` and `<name>-filters` (the explanations as
models), where `<name>` and the version are the manifest's. Classifier and saliency take either `images`, BYTES
[N] or [N, 1] of encoded images (any format /predict reads; base64 strings when sent as JSON rather than binary),
or `faces`, UINT8 [N, 1, H, W] at the model's input size. v2 does no face detection: each image is the face.
Errors are `{"error": "..."}`; tensors are decoded and encoded in service/oip.py.
"""

import base64
import binascii
import re
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import get_args

import numpy as np
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse, Response

from schemas.api import ProtocolErrorResponse
from service import oip
from service.deps import get_model, preprocess_bounded
from service.imaging import ImageError
from service.model import FerModel
from service.parameters import check_saliency_cost, checked_filter_request, filter_views, parse_target
from service.runtime.explain import METHODS
from service.runtime.filters import DEFAULT_SIZE, DEFAULT_STEPS, SIZES, FilterMode
from service.oip import ProtocolError
from service.settings import Settings

# 400 malformed request or model not ready, 404 unknown model or version, 413 past a limit, 415 unknown encoding,
# 503 queue or explanation slots full: every error is the protocol's `{"error": ...}`.
router = APIRouter(prefix="/v2", tags=["open inference protocol (v2)"],
                   responses={status: {"model": ProtocolErrorResponse} for status in (400, 404, 413, 415, 503)})
PREFIX = "/v2/"
SERVER_NAME = "fer-explain"
EXTENSIONS = ["binary_tensor_data", "classification", "model_configuration", "parameters"]
FILTER_MODES = get_args(FilterMode)
PLATFORMS = {"torchscript": "pytorch_libtorch", "onnx": "onnxruntime_onnx"}  # Triton's names for the formats


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1: any size; the batch dimension comes first where the model batches
    optional: bool = False


@dataclass(frozen=True)
class ModelSpec:
    name: str
    kind: str  # classifier, saliency or filters
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int  # 0: the model does not batch


def model_specs(model: FerModel, settings: Settings) -> dict[str, ModelSpec]:
    manifest = model.manifest
    height, width, side = manifest.input.height, manifest.input.width, manifest.preprocessing.resize_to
    classes, batch = len(manifest.classes), settings.max_images_per_request
    images = (TensorSpec("images", "BYTES", (-1, 1), optional=True),
              TensorSpec("faces", "UINT8", (-1, 1, height, width), optional=True))
    probabilities = TensorSpec("probabilities", "FP32", (-1, classes))
    specs = [
        ModelSpec(manifest.name, "classifier", images, (probabilities, TensorSpec("label", "BYTES", (-1,))), batch),
        ModelSpec(f"{manifest.name}-saliency", "saliency", images,
                  (TensorSpec("saliency", "FP32", (-1, side, side)), TensorSpec("target", "INT32", (-1,)),
                   probabilities), batch),
        ModelSpec(f"{manifest.name}-filters", "filters",
                  (TensorSpec("layer", "BYTES", (1,)), TensorSpec("filters", "INT32", (-1,))),
                  (TensorSpec("images", "FP32", (-1, -1, -1)), TensorSpec("activations", "FP32", (-1,))), 0),
    ]
    return {spec.name: spec for spec in specs}


def find_model(request: Request, model: FerModel, name: str, version: str | None) -> ModelSpec:
    specs = model_specs(model, request.app.state.settings)
    if name not in specs:
        raise HTTPException(404, f"unknown model {name!r}; served: {', '.join(specs)}")
    if version not in (None, "", model.manifest.version):
        raise HTTPException(404, f"unknown version {version!r} of {name!r}; served: {model.manifest.version}")
    return specs[name]


def loaded_model(request: Request) -> FerModel | None:
    """The model whose manifest is read, ready or not (starting and draining servers still describe it)."""
    model = getattr(request.app.state, "model", None)
    return model if model is not None and model.manifest is not None else None


# --- errors --------------------------------------------------------------------------------------------

def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


# --- health, server and model metadata --------------------------------------------------------------

@router.get("")
async def server_metadata(request: Request) -> dict:
    return {"name": SERVER_NAME, "version": request.app.version, "extensions": EXTENSIONS}


@router.get("/health/live")
async def server_live() -> dict:
    return {"live": True}


@router.get("/health/ready")
async def server_ready(request: Request) -> JSONResponse:
    """200 when ready; the protocol answers 'not ready' with a 4xx."""
    model = loaded_model(request)
    if model is None or not model.ready:
        return _error(400, "the model is not loaded (starting or shutting down)")
    return JSONResponse({"ready": True})


@router.get("/models/{name}/ready")
@router.get("/models/{name}/versions/{version}/ready")
async def model_ready(request: Request, name: str, version: str | None = None) -> JSONResponse:
    model = loaded_model(request)
    if model is None or not model.ready:
        return _error(400, "the model is not loaded (starting or shutting down)")
    spec = find_model(request, model, name, version)
    return JSONResponse({"name": spec.name, "ready": True})


@router.get("/models/{name}")
@router.get("/models/{name}/versions/{version}")
async def model_metadata(request: Request, name: str, version: str | None = None) -> dict:
    model = get_model(request)
    spec = find_model(request, model, name, version)
    return {"name": spec.name, "versions": [model.manifest.version], "platform": PLATFORMS[model.info().backend],
            "inputs": [_metadata_tensor(t) for t in spec.inputs], "outputs": [_metadata_tensor(t) for t in spec.outputs]}


def _metadata_tensor(tensor: TensorSpec) -> dict:
    return {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}


@router.get("/models/{name}/config")
@router.get("/models/{name}/versions/{version}/config")
async def model_config(request: Request, name: str, version: str | None = None) -> dict:
    """Triton's model configuration (as JSON): what perf_analyzer and Triton tooling read."""
    model = get_model(request)
    spec = find_model(request, model, name, version)
    info, settings = model.info(), request.app.state.settings
    config = {
        "name": spec.name, "platform": PLATFORMS[info.backend], "max_batch_size": spec.max_batch_size,
        "input": [_config_tensor(t, spec.max_batch_size) for t in spec.inputs],
        "output": [_config_tensor(t, spec.max_batch_size) for t in spec.outputs],
        "version_policy": {"latest": {"num_versions": 1}},
        "instance_group": [{"name": spec.name, "count": 1,
                            "kind": "KIND_GPU" if info.device.startswith("cuda") else "KIND_CPU"}],
        "parameters": {"labels": {"string_value": ",".join(model.manifest.classes)}},
    }
    if spec.kind == "classifier":  # requests share forward passes through the dynamic batcher
        config["dynamic_batching"] = {"max_queue_delay_microseconds": int(settings.batch_wait_ms * 1000),
                                      "default_queue_policy": {"max_queue_size": settings.queue_limit}}
    return config


def _config_tensor(tensor: TensorSpec, max_batch_size: int) -> dict:
    dims = list(tensor.shape[1:] if max_batch_size else tensor.shape)
    described = {"name": tensor.name, "data_type": "TYPE_STRING" if tensor.datatype == "BYTES"
                 else f"TYPE_{tensor.datatype}", "dims": dims or [1]}
    if not dims:  # Triton's way to write a scalar per batch row
        described["reshape"] = {"shape": []}
    if tensor.optional:
        described["optional"] = True
    return described


@router.post("/repository/index")
async def repository_index(request: Request) -> list[dict]:
    model = loaded_model(request)
    if model is None:
        raise HTTPException(503, "the model is not loaded yet", headers={"Retry-After": "1"})
    state = {"state": "READY"} if model.ready else {"state": "UNAVAILABLE", "reason": "shutting down"}
    return [{"name": name, "version": model.manifest.version, **state} for name in model_specs(model, request.app.state.settings)]


# --- inference ---------------------------------------------------------------------------------------

@router.post("/models/{name}/infer")
@router.post("/models/{name}/versions/{version}/infer")
async def infer(request: Request, name: str, version: str | None = None) -> Response:
    model = get_model(request)
    spec = find_model(request, model, name, version)
    body = await _read_body(request, request.app.state.settings.max_request_bytes)
    parsed = oip.parse_request(body, request.headers.get(oip.HEADER_LENGTH))
    _check_inputs(spec, parsed)
    wanted = _wanted_outputs(spec, parsed, len(model.manifest.classes))
    results, parameters = await RUNNERS[spec.kind](request, model, parsed)
    datatypes = {t.name: t.datatype for t in spec.outputs}
    outputs = []
    for want in wanted:
        if want.classification:
            outputs.append((want.name, "BYTES", oip.classify(results[want.name], want.classification,
                                                              model.manifest.classes), want.binary))
        else:
            outputs.append((want.name, datatypes[want.name], results[want.name], want.binary))
    content, header_length = oip.encode_response(spec.name, model.manifest.version, parsed.id, outputs, parameters)
    if header_length is None:
        return Response(content, media_type="application/json")
    return Response(content, media_type="application/octet-stream",
                    headers={oip.HEADER_LENGTH: str(header_length)})


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, inflated where the client compressed it (tritonclient's request_compression_algorithm)."""
    body = await request.body()
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding not in ("gzip", "deflate"):
        raise HTTPException(415, f"unsupported Content-Encoding {encoding!r}: send gzip, deflate or none")
    inflater = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        inflated = inflater.decompress(body, limit + 1)
    except zlib.error as error:
        raise HTTPException(400, f"the {encoding} body cannot be inflated ({error})") from None
    if len(inflated) > limit or inflater.unconsumed_tail:
        raise HTTPException(413, f"the inflated request body exceeds the limit of {limit} bytes")
    return inflated


def _check_inputs(spec: ModelSpec, request: oip.Request) -> None:
    expected = {t.name: t for t in spec.inputs}
    for tensor in request.inputs.values():
        if tensor.name not in expected:
            raise ProtocolError(f"unexpected input {tensor.name!r} for model {spec.name!r}; inputs: "
                                f"{', '.join(expected)}")
        if tensor.datatype != expected[tensor.name].datatype:
            raise ProtocolError(f"input {tensor.name!r} of model {spec.name!r} must be "
                                f"{expected[tensor.name].datatype}, got {tensor.datatype}")
    missing = [t.name for t in spec.inputs if not t.optional and t.name not in request.inputs]
    if missing:
        raise ProtocolError(f"model {spec.name!r} needs input(s) {', '.join(missing)}")


def _wanted_outputs(spec: ModelSpec, request: oip.Request, classes: int) -> list[oip.Wanted]:
    names = [t.name for t in spec.outputs]
    if not request.outputs:
        return [oip.Wanted(name, request.binary_output) for name in names]
    for want in request.outputs:
        if want.name not in names:
            raise ProtocolError(f"unknown output {want.name!r} of model {spec.name!r}; outputs: {', '.join(names)}")
        if want.classification and want.name != "probabilities":
            raise ProtocolError(f"classification applies to `probabilities`, not to {want.name!r}")
        if want.classification and want.classification > classes:
            raise ProtocolError(f"classification {want.classification} asks for more than the {classes} classes")
    return request.outputs


async def _face_batch(request: Request, model: FerModel, parsed: oip.Request) -> np.ndarray:
    """uint8 N x 1 x H x W from `images` (decoded like /predict's uploads) or `faces` (used as they are)."""
    given = [name for name in ("images", "faces") if name in parsed.inputs]
    if len(given) != 1:
        raise ProtocolError("send exactly one of the inputs `images` (BYTES, encoded images) and `faces` "
                            f"(UINT8 [N, 1, H, W]); got {given or 'neither'}")
    tensor = parsed.inputs[given[0]]
    limit = request.app.state.settings.max_images_per_request
    count = tensor.shape[0] if tensor.shape else 0
    if count > limit:
        raise ProtocolError(f"too many images: {count} in one request, the limit is {limit}", status=413)
    if tensor.name == "faces":
        expected = [count, 1, model.manifest.input.height, model.manifest.input.width]
        if tensor.shape != expected or count == 0:
            raise ProtocolError(f"`faces` must have shape [N, 1, {expected[2]}, {expected[3]}] with N >= 1, "
                                f"got {tensor.shape}")
        return np.ascontiguousarray(tensor.data)
    if tensor.shape not in ([count], [count, 1]) or count == 0:
        raise ProtocolError(f"`images` must have shape [N] or [N, 1] with N >= 1, got {tensor.shape}")
    files = [(f"images[{i}]", data if tensor.binary else _b64decode(data, i))
             for i, data in enumerate(tensor.data.reshape(-1))]
    try:  # whole images, as the protocol's one row per input asks; decoded like /predict's, within its slots
        photos = await preprocess_bounded(request, model, files, "none", False)
    except ImageError as error:
        raise ProtocolError(str(error), error.status) from None
    return np.concatenate([photo.crops for photo in photos])


def _b64decode(text: bytes, index: int) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError(f"images[{index}]: BYTES sent as JSON must be base64 (or send binary data)") from None


Runner = Callable[[Request, FerModel, oip.Request], Awaitable[tuple[dict[str, np.ndarray], dict]]]


async def run_classifier(request: Request, model: FerModel, parsed: oip.Request):
    images = await _face_batch(request, model, parsed)
    result = await request.app.state.batcher.submit(images)  # a full queue: 503 (service/errors.py)
    request.app.state.metrics.images.labels("/v2/models/{name}/infer").inc(len(images))
    probabilities = np.asarray(result.probabilities, dtype=np.float32)
    labels = oip.bytes_tensor([model.manifest.classes[i] for i in probabilities.argmax(1)])
    return {"probabilities": probabilities, "label": labels}, {}


async def run_saliency(request: Request, model: FerModel, parsed: oip.Request):
    method = parsed.parameters.get("method", "vanilla")
    if method not in METHODS:
        raise ProtocolError(f"unknown saliency method {method!r}; expected one of {', '.join(METHODS)}")
    target = parse_target(parsed.parameters.get("target"), model.manifest.classes)
    settings, pool = request.app.state.settings, request.app.state.explanations
    with pool.admitted() as ticket:  # before decoding, as /saliency
        images = await _face_batch(request, model, parsed)
        check_saliency_cost(model, method, len(images), settings.max_explanation_passes)
        maps, targets, probabilities = await pool.run(ticket, request, model.saliency, images, method, target)
    request.app.state.metrics.images.labels("/v2/models/{name}/infer").inc(len(images))
    return {"saliency": maps.numpy().astype(np.float32), "target": targets.numpy().astype(np.int32),
            "probabilities": probabilities.numpy().astype(np.float32)}, {"method": method}


async def run_filters(request: Request, model: FerModel, parsed: oip.Request):
    settings = request.app.state.settings
    layer_tensor, filters_tensor = parsed.inputs["layer"], parsed.inputs["filters"]
    if layer_tensor.data.size != 1:
        raise ProtocolError(f"`layer` holds one layer name, got shape {layer_tensor.shape}")
    layer = layer_tensor.data.reshape(-1)[0].decode(errors="replace")
    indices = tuple(int(i) for i in filters_tensor.data.reshape(-1))
    mode = parsed.parameters.get("mode", FILTER_MODES[0])
    if mode not in FILTER_MODES:
        raise ProtocolError(f"unknown mode {mode!r}; expected one of {', '.join(FILTER_MODES)}")
    steps = _int_parameter(parsed.parameters, "steps", DEFAULT_STEPS, 1)  # its limit: checked_filter_request
    size = _int_parameter(parsed.parameters, "size", DEFAULT_SIZE, *SIZES)
    filter_request = checked_filter_request(model, settings, layer, indices, mode, steps, size)
    result, cached = await filter_views(request, model, request.app.state.explanations, filter_request,
                                        settings.max_filter_cost)
    return ({"images": np.asarray(result.images, dtype=np.float32),
             "activations": np.asarray(result.activations, dtype=np.float32)},
            {"cached": cached, "steps": filter_request.steps, "size": filter_request.size})


def _int_parameter(parameters: dict, key: str, default: int, low: int, high: int | None = None) -> int:
    value = parameters.get(key, default)
    if isinstance(value, str) and re.fullmatch(r"[0-9]{1,9}", value.strip()):  # not str.isdigit: '²' is a digit
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < low or (high is not None and value > high):
        bounds = f"from {low} to {high}" if high is not None else f"of at least {low}"
        raise ProtocolError(f"parameter {key!r} must be an integer {bounds}, got {value!r}")
    return value


RUNNERS: dict[str, Runner] = {"classifier": run_classifier, "saliency": run_saliency, "filters": run_filters}
