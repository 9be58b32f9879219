"""The Open Inference Protocol (KServe v2, Triton's HTTP/REST flavour) next to the service's own endpoints: a thin
adapter over the data plane, as the REST routes are.

Three models are served: `<name>` (the classifier), `<name>-saliency` and `<name>-filters` (the explanations as
models), where `<name>` and the version are the manifest's; their signatures are in service/oip_models.py and the
tensors are decoded and encoded in service/oip.py. Each image is one face unless the parameter `faces` asks for
detection. Errors are `{"error": "..."}` (service/errors.py).
"""

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from schemas.api import ProtocolErrorResponse
from service import oip, oip_models
from service.dataplane import DataPlane, NotReady, SaliencyQuery
from service.deps import Plane
from service.model import FerModel
from service.oip_models import ModelSpec

# 400 malformed request or model not ready, 404 unknown model or version, 413 past a limit, 415 unknown encoding,
# 503 queue or explanation slots full: every error is the protocol's `{"error": ...}`.
router = APIRouter(prefix="/v2", tags=["open inference protocol (v2)"],
                   responses={status: {"model": ProtocolErrorResponse} for status in (400, 404, 413, 415, 503)})
SERVER_NAME = "fer-explain"
EXTENSIONS = ["binary_tensor_data", "classification", "model_configuration", "parameters"]
INFER_PATH = "/v2/models/{name}/infer"  # the image counters' label


def find_model(plane: DataPlane, name: str, version: str | None) -> ModelSpec:
    """The named model of the loaded manifest (starting and draining servers still describe it)."""
    return oip_models.find_model(loaded(plane).manifest, plane.settings, name, version)


def loaded(plane: DataPlane) -> FerModel:
    model = plane.loaded()
    if model is None:
        raise NotReady("the model is not loaded yet")
    return model


def _not_ready(plane: DataPlane) -> JSONResponse | None:
    """The protocol answers 'not ready' with a 4xx, draining included."""
    status = plane.readiness()
    return None if status == "ready" else JSONResponse({"error": f"the model is {status} (starting or shutting "
                                                                 "down)"}, status_code=400)


@router.get("")
async def server_metadata(request: Request) -> dict:
    return {"name": SERVER_NAME, "version": request.app.version, "extensions": EXTENSIONS}


@router.get("/health/live")
async def server_live() -> dict:
    return {"live": True}


@router.get("/health/ready")
async def server_ready(plane: Plane) -> JSONResponse:
    return _not_ready(plane) or JSONResponse({"ready": True})


@router.get("/models/{name}/ready")
@router.get("/models/{name}/versions/{version}/ready")
async def model_ready(plane: Plane, name: str, version: str | None = None) -> JSONResponse:
    return _not_ready(plane) or JSONResponse({"name": find_model(plane, name, version).name, "ready": True})


@router.get("/models/{name}")
@router.get("/models/{name}/versions/{version}")
async def model_metadata(plane: Plane, name: str, version: str | None = None) -> dict:
    model = plane.served()
    return oip_models.metadata(find_model(plane, name, version), model.manifest.version, model.info().backend)


@router.get("/models/{name}/config")
@router.get("/models/{name}/versions/{version}/config")
async def model_config(plane: Plane, name: str, version: str | None = None) -> dict:
    """Triton's model configuration (as JSON): what perf_analyzer and Triton tooling read."""
    model = plane.served()
    info = model.info()
    return oip_models.triton_config(find_model(plane, name, version), model.manifest, plane.settings, info.backend,
                                    info.device)


@router.post("/repository/index")
async def repository_index(plane: Plane) -> list[dict]:
    model, readiness = loaded(plane), plane.readiness()
    state = {"state": "READY"} if readiness == "ready" else {"state": "UNAVAILABLE", "reason": readiness}
    return [{"name": name, "version": model.manifest.version, **state}
            for name in oip_models.model_specs(model.manifest, plane.settings)]


@router.post("/models/{name}/infer")
@router.post("/models/{name}/versions/{version}/infer")
async def infer(request: Request, plane: Plane, name: str, version: str | None = None) -> Response:
    model = plane.served()
    spec = find_model(plane, name, version)
    body = oip.inflate(await request.body(), request.headers.get("content-encoding", "identity"),
                       plane.settings.max_request_bytes)
    parsed = oip.parse_request(body, request.headers.get(oip.HEADER_LENGTH))
    oip_models.check_inputs(spec, parsed)
    wanted = oip_models.wanted_outputs(spec, parsed, len(model.classes))
    results, parameters = await RUNNERS[spec.kind](request, plane, parsed)
    datatypes = {t.name: t.datatype for t in spec.outputs}
    outputs = [(want.name, "BYTES", oip.classify(results[want.name], want.classification, model.classes), want.binary)
               if want.classification else (want.name, datatypes[want.name], results[want.name], want.binary)
               for want in wanted]
    content, header_length = oip.encode_response(spec.name, model.manifest.version, parsed.id, outputs, parameters)
    if header_length is None:
        return Response(content, media_type="application/json")
    return Response(content, media_type="application/octet-stream", headers={oip.HEADER_LENGTH: str(header_length)})


def _images(plane: DataPlane, parsed: oip.Request):
    return oip_models.images_input(parsed, plane.served().manifest.input, plane.settings.max_images_per_request)


async def run_classifier(request: Request, plane: DataPlane, parsed: oip.Request):
    result = await plane.classify(_images(plane, parsed), INFER_PATH)
    labels = oip.bytes_tensor([plane.served().classes[i] for i in result.probabilities.argmax(1)])
    return {"probabilities": result.probabilities, "label": labels, **oip_models.face_outputs(result.uploaded)}, {}


async def run_saliency(request: Request, plane: DataPlane, parsed: oip.Request):
    query = SaliencyQuery(parsed.parameters.get("method", "vanilla"), parsed.parameters.get("target"),
                          parsed.parameters.get("layer"))

    async def read():
        return _images(plane, parsed)

    result = await plane.saliency(read, query, INFER_PATH, request)
    return {"saliency": result.maps, "target": np.asarray(result.targets, dtype=np.int32),
            "probabilities": result.probabilities, **oip_models.face_outputs(result.uploaded)}, {"method": query.method}


async def run_filters(request: Request, plane: DataPlane, parsed: oip.Request):
    filtered = await plane.filters(*oip_models.filters_input(parsed), request)
    return ({"images": np.asarray(filtered.result.images, dtype=np.float32),
             "activations": np.asarray(filtered.result.activations, dtype=np.float32)},
            {"cached": filtered.cached, "steps": filtered.request.steps, "size": filtered.request.size})


RUNNERS = {"classifier": run_classifier, "saliency": run_saliency, "filters": run_filters}
