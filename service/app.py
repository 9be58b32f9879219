"""The app factory: settings in, FastAPI app out; the model is loaded and warmed up at start."""

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from service.admission import Busy, Draining, ExplanationPool
from service.batching import DynamicBatcher
from service.runtime.explain import Cancelled
from service.metrics import Metrics, MetricsMiddleware
from service.model import FerModel
from service.routers import explain, health, model, predict
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
        explanations = ExplanationPool(settings.explain_workers, settings.explain_queue)
        app.state.model, app.state.batcher, app.state.explanations = fer_model, batcher, explanations
        info = fer_model.info()
        logger.info("serving %s %s on %s with %s", info.name, info.version, info.device, info.backend)
        yield
        fer_model.ready = False  # /readyz turns 503 while the queue drains
        explanations.close()
        await batcher.close()
        logger.info("drained and stopped")

    app = FastAPI(title="FER explain", version="0.1.0", lifespan=lifespan,
                  description="Facial-expression recognition (FER2013, ResNet18) with saliency maps and filter views.")
    app.state.settings = settings
    app.state.metrics = metrics
    for router in (predict.router, explain.router, model.router, health.router):
        app.include_router(router)
    app.add_exception_handler(Busy, _unavailable)
    app.add_exception_handler(Draining, _unavailable)
    app.add_exception_handler(Cancelled, _unavailable)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_request_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app


async def _unavailable(request: Request, error: Exception) -> JSONResponse:
    """Explanation slots full, work cancelled, or the service draining: retry, elsewhere or later."""
    return JSONResponse({"detail": f"try again shortly: {error}"}, status_code=503, headers={"Retry-After": "1"})
