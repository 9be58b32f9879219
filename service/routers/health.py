from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

router = APIRouter(tags=["operations"])

HEALTH_PATH = "/healthz"
READY_PATH = "/readyz"
METRICS_PATH = "/metrics"


@router.get(HEALTH_PATH)
async def healthz() -> dict:
    """Liveness: the process answers."""
    return {"status": "alive"}


@router.get(READY_PATH)
async def readyz(request: Request) -> JSONResponse:
    """Readiness: the model is loaded, verified and warmed up, and the service is not draining."""
    model = getattr(request.app.state, "model", None)
    if model is None or not model.ready:
        return JSONResponse({"status": "not ready"}, status_code=503)
    return JSONResponse({"status": "ready", "model": model.info().model_dump()})


@router.get(METRICS_PATH)
async def metrics(request: Request) -> Response:
    """Prometheus text format."""
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
