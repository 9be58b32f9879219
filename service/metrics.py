"""Prometheus metrics, in a registry of the app's own (so that several apps can live in one process)."""

import re
import time

import torch
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
# Label values come from closed sets, whatever clients send: an invented method is "other", a path that
# matches no route is "unmatched".
HTTP_METHODS = {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"}


class BatcherMetrics:
    """What a dynamic batcher reports: its queue, its batches, how long images wait and how long a batch runs."""

    def __init__(self, registry: CollectorRegistry, prefix: str, what: str, run_name: str, run_help: str):
        self.batch_size = Histogram(f"{prefix}batch_size", f"{what} per batch", buckets=BATCH_BUCKETS,
                                    registry=registry)
        self.queue_depth = Gauge(f"{prefix}queue_depth", f"{what} waiting for a batch", registry=registry)
        self.queue_wait = Histogram(f"{prefix}queue_wait_seconds", "Time from queueing to the start of the batch",
                                    buckets=LATENCY_BUCKETS, registry=registry)
        self.run_time = Histogram(run_name, run_help, buckets=LATENCY_BUCKETS, registry=registry)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("fer_requests", "HTTP requests by endpoint and status", ["method", "endpoint", "status"], registry=r)
        self.latency = Histogram("fer_request_duration_seconds", "HTTP request latency", ["method", "endpoint"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.images = Counter("fer_images", "Images answered (photos, face crops, video frames)", ["endpoint"],
                              registry=r)
        self.faces = Counter("fer_faces", "Faces classified", ["endpoint"], registry=r)
        self.inference = BatcherMetrics(r, "fer_", "Face crops (the classifier's images)", "fer_inference_seconds",
                                        "Forward pass time of one batch")
        self.detection = BatcherMetrics(r, "fer_detection_", "Photos (face detection's images)",
                                        "fer_face_detection_batch_seconds", "Face detection time of one batch of photos")
        self.explanation_time = Histogram("fer_explanation_seconds", "Time to compute an explanation", ["kind"],
                                          buckets=LATENCY_BUCKETS, registry=r)
        self.cache_hits = Counter("fer_filter_cache_hits", "Filter visualisations served from the cache", registry=r)
        self.cache_misses = Counter("fer_filter_cache_misses", "Filter visualisations computed", registry=r)
        self.faces_per_image = Histogram("fer_faces_per_image", "Faces found per uploaded image (faces=auto|detect)",
                                         buckets=(0, 1, 2, 3, 4, 6, 8, 16, 32, 64), registry=r)
        self.model_info = Info("fer_model", "The model being served", registry=r)
        self.video_frames = Counter("fer_video_frames", "Video frames decoded, and sampled for analysis", ["stage"],
                                    registry=r)
        self.video_seconds = Counter("fer_video_seconds", "Seconds of video analysed (sampled frames / sampled rate)",
                                     registry=r)
        self.video_decode_time = Histogram("fer_video_decode_seconds", "Time to decode a sampled frame (with the "
                                           "frames skipped before it) and ready it for detection", buckets=LATENCY_BUCKETS, registry=r)
        self.video_tracks = Histogram("fer_video_tracks", "Face tracks per analysed video",
                                      buckets=(0, 1, 2, 3, 4, 6, 8, 12, 16, 32, 64), registry=r)
        self.backend_throughput = Gauge("fer_backend_images_per_second",
                                        "Images/s of each backend measured at start (FER_BACKEND=auto)", ["backend"],
                                        registry=r)
        self.gpu_memory = Gauge("fer_gpu_memory_bytes", "CUDA memory held by the service", ["kind"], registry=r)

    def watch_gpu_memory(self, device: torch.device) -> None:
        """Read at scrape time, so the figures are current."""
        self.gpu_memory.labels("allocated").set_function(lambda: torch.cuda.memory_allocated(device))
        self.gpu_memory.labels("reserved").set_function(lambda: torch.cuda.memory_reserved(device))


class MetricsMiddleware:
    """Counts and times every request by method and route template (never the raw method or path, so that
    clients cannot grow the label sets)."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics
        self._templates: list[tuple[re.Pattern, str]] | None = None

    def _route_template(self, scope: Scope) -> str:
        """The endpoint (route template, e.g. /v2/models/{name}/infer) of a request refused before routing (a body
        over its limit: 413), matched against the app's documented paths; "unmatched" if none matches."""
        if self._templates is None:
            openapi = getattr(scope.get("app"), "openapi", None)
            self._templates = [(compile_path(path)[0], path) for path in openapi()["paths"]] if openapi else []
        path, root = scope["path"], scope.get("root_path", "")
        path = path[len(root):] if root and path.startswith(root) else path  # routes see it without the root path
        return next((template for pattern, template in self._templates if pattern.match(path)), "unmatched")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            method = scope["method"] if scope["method"] in HTTP_METHODS else "other"
            route = scope.get("route")
            endpoint = getattr(route, "path", "unmatched") if route is not None else self._route_template(scope)
            self.metrics.requests.labels(method, endpoint, str(status)).inc()
            self.metrics.latency.labels(method, endpoint).observe(time.perf_counter() - started)
