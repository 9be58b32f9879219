"""The app factory: settings in, FastAPI app out; the model is loaded and warmed up at start."""

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from service.batching import DynamicBatcher
from service.metrics import Metrics, MetricsMiddleware
from service.model import FerModel
from service.oip import ProtocolError
from service.routers import explain, health, model, predict, v2
from service.settings import Settings, get_settings
from service.uploads import BodySizeLimitMiddleware

logger = logging.getLogger("service")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        fer_model = FerModel(settings, metrics)
        fer_model.load()
        batcher = DynamicBatcher(fer_model.predict, settings.max_batch_size, settings.batch_wait_ms / 1000,
                                 settings.queue_limit, metrics)
        batcher.start()
        app.state.model, app.state.batcher = fer_model, batcher
        info = fer_model.info()
        logger.info("serving %s %s on %s with %s", info.name, info.version, info.device, info.backend)
        yield
        fer_model.ready = False  # /readyz turns 503 while the queue drains
        await batcher.close()
        logger.info("drained and stopped")

    app = FastAPI(title="FER explain", version="0.1.0", lifespan=lifespan,
                  description="Facial-expression recognition (FER2013, ResNet18) with saliency maps and filter views.")
    app.state.settings = settings
    app.state.metrics = metrics
    for router in (predict.router, explain.router, model.router, health.router, v2.router):
        app.include_router(router)
    # Errors under /v2 are the protocol's {"error": ...}; the other routes keep FastAPI's {"detail": ...}.
    app.add_exception_handler(HTTPException, v2.http_error)
    app.add_exception_handler(RequestValidationError, v2.validation_error)
    app.add_exception_handler(ProtocolError, v2.protocol_error)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_request_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app
