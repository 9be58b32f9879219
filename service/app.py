"""The app factory: settings in, FastAPI app out; the model is loaded and warmed up at start."""

import logging
import threading
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi_offline import FastAPIOffline
from starlette.middleware.cors import CORSMiddleware

from service.dataplane import DataPlane
from service.errors import install_error_handlers, install_openapi
from service.metrics import Metrics, MetricsMiddleware
from service.routers import explain, health, model, predict, v2, video
from service.security import ApiKeys, require_api_key
from service.settings import Settings, get_settings
from service.uploads import BodySizeLimitMiddleware, RefusedBodyDrainMiddleware
from service.web import add_web_page

logger = logging.getLogger("service")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    metrics = Metrics()
    api_keys = ApiKeys.from_settings(settings)  # a missing or empty key file stops the start here

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        plane = app.state.plane
        plane.start()
        info = plane.model.info()
        logger.info("serving %s %s on %s with %s", info.name, info.version, info.device, info.backend)
        yield
        await plane.close()  # readiness turns not-ready while the queue drains
        logger.info("drained and stopped")

    # /docs: Swagger UI served from the fastapi-offline package, so it works offline. No /redoc: ReDoc's page
    # always fetches its maker's logo from a CDN.
    app = FastAPIOffline(title="FER explain", version="0.1.0", lifespan=lifespan, redoc_url=None,
                         dependencies=[Depends(require_api_key)],
                         description="Facial-expression recognition (FER2013, ResNet18) with saliency maps and "
                                     "filter views. A web page for people is at `/`.")
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.api_keys = api_keys
    app.state.draining = threading.Event()  # set by the server on SIGTERM: every readiness probe fails at once
    app.state.plane = DataPlane(settings, metrics, app.state.draining)
    for router in (predict.router, explain.router, video.router, model.router, health.router, v2.router):
        app.include_router(router)
    add_web_page(app)
    install_error_handlers(app)
    install_openapi(app, keys_required=api_keys.enabled, metrics_open=not settings.metrics_require_key)
    # Outermost last: metrics see every answer, CORS headers go on errors too and preflights need no key; a
    # refused body is drained outside the size limit, reading the raw body (the limit's 413 is not drained).
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_request_bytes,
                       path_limits={"/video": settings.max_video_bytes})
    app.add_middleware(RefusedBodyDrainMiddleware)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "X-API-Key", "Content-Type"],
                           expose_headers=["X-Targets", "X-Predicted", "X-Overlay-Left", "X-Overlay-Scale", "X-Cache",
                                           "X-Filters", "Retry-After"])
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app
