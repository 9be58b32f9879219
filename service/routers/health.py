from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from schemas.api import Readiness

router = APIRouter(tags=["operations"])
NOT_READY = {503: {"model": Readiness, "description": "Starting, or draining after SIGTERM"}}

HEALTH_PATH = "/healthz"
READY_PATH = "/readyz"
METRICS_PATH = "/metrics"


@router.get(HEALTH_PATH)
async def healthz() -> dict:
    """Liveness: the process answers."""
    return {"status": "alive"}


@router.get(READY_PATH, response_model=Readiness, responses=NOT_READY)
async def readyz(request: Request) -> JSONResponse:
    """Readiness: the model is loaded, verified and warmed up, and the service is not draining (503 from the
    moment SIGTERM arrives; shortly after, the listener closes)."""
    plane = request.app.state.plane
    status = plane.readiness()
    if status != "ready":
        return JSONResponse({"status": status}, status_code=503)
    return JSONResponse({"status": status, "model": plane.model.info().model_dump()})


@router.get(METRICS_PATH, response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format"}})
async def metrics(request: Request) -> Response:
    """Prometheus text format."""
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
