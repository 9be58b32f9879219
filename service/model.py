"""The served model, KServe style: `load`, `preprocess`, `predict`, `explain`; no HTTP in here.

It puts the runtime layer (model directory, backends, explainer, filter store) together with the service's
settings and metrics.
"""

import threading
import time
from pathlib import Path

import numpy as np
import torch

from schemas.api import ArchitectureRow, ExplanationMethod, ModelInfo, ModelReport
from schemas.manifest import Manifest
from service.imaging import decode_image
from service.metrics import Metrics
from service.runtime.backends import Backend, load_backend, resolve_device
from service.runtime.explain import METHODS, Explainer
from service.runtime.filters import FilterRequest, FilterResult, FilterStore, compute_filters
from service.runtime.modeldir import ModelDirError, load_eager_model, load_manifest, read_json
from service.runtime.tta import predict_with_tta
from service.settings import Settings


class FerModel:
    def __init__(self, settings: Settings, metrics: Metrics):
        self.settings = settings
        self.metrics = metrics
        self.model_dir = Path(settings.model_dir)
        self.manifest: Manifest | None = None
        self.backend: Backend | None = None
        self.backend_throughput: dict[str, float] = {}
        self.explainer: Explainer | None = None
        self.filter_store: FilterStore | None = None
        self.tta = "none"
        self.ready = False

    @property
    def classes(self) -> list[str]:
        return self.manifest.classes

    # --- load -------------------------------------------------------------------------------------
    def load(self) -> None:
        """Verify the artifacts, load the backend and the explainer, warm both up."""
        self.manifest = load_manifest(self.model_dir)
        device = resolve_device(self.settings.device)
        self.backend, self.backend_throughput = load_backend(self.model_dir, self.manifest, self.settings.backend,
                                                             device, self.settings.precision,
                                                             self.settings.max_batch_size)
        for name, images_per_second in self.backend_throughput.items():
            self.metrics.backend_throughput.labels(name).set(images_per_second)
        self.tta = self.manifest.tta if self.settings.tta == "manifest" else self.settings.tta
        self.explainer = Explainer(load_eager_model(self.model_dir, self.manifest, device),
                                   self.manifest.architecture, device)
        self.filter_store = FilterStore(self.model_dir, self.manifest.version, self.settings.filter_cache_size)
        if device.type == "cuda":
            self.metrics.watch_gpu_memory(device)
        self.warm_up()
        info = self.info()
        self.metrics.model_info.info({"name": info.name, "version": info.version, "backend": info.backend,
                                      "device": info.device, "tta": self.tta})
        self.ready = True

    def warm_up(self) -> None:
        """First calls allocate and tune kernels; pay for them before serving. Checks the output width."""
        shape = (1, self.manifest.input.height, self.manifest.input.width)
        for batch in sorted({1, self.settings.max_batch_size}):
            probabilities = self.predict(np.zeros((batch, *shape), dtype=np.uint8))
            if probabilities.shape != (batch, len(self.classes)):
                raise ModelDirError(f"{self.model_dir}: the model returns {probabilities.shape[1]} probabilities "
                                    f"per image, but the manifest names {len(self.classes)} classes")
        self.explainer.saliency(torch.zeros((1, *shape), dtype=torch.uint8), "vanilla")

    def info(self) -> ModelInfo:
        return ModelInfo(name=self.manifest.name, version=self.manifest.version, backend=self.backend.name,
                         device=self.backend.device, tta=self.tta, backend_throughput=self.backend_throughput)

    # --- preprocess / predict ------------------------------------------------------------------------
    def preprocess(self, files: list[tuple[str, bytes]]) -> np.ndarray:
        """Decode each upload to the training resolution: uint8 N x 1 x H x W. Raises ImageError."""
        size = (self.manifest.input.height, self.manifest.input.width)
        return np.stack([decode_image(data, name, size, self.settings.max_image_pixels)
                         for name, data in files])[:, None]

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Probabilities N x classes for a uint8 batch (what the batcher calls), with the model's TTA."""
        return predict_with_tta(self.backend.predict, images, self.tta)

    # --- explain -------------------------------------------------------------------------------------
    def saliency(self, images: np.ndarray, method: str, target: int | None, layer: str | None = None,
                 cancel: threading.Event | None = None):
        started = time.perf_counter()
        result = self.explainer.saliency(torch.from_numpy(images), method, target, layer, cancel)
        self.metrics.explanation_time.labels(method).observe(time.perf_counter() - started)
        return result

    def cached_filters(self, request: FilterRequest) -> FilterResult | None:
        """The visualisation from memory or the precomputed files, if it is there."""
        cached = self.filter_store.get(request)
        (self.metrics.cache_hits if cached is not None else self.metrics.cache_misses).inc()
        return cached

    def filters(self, request: FilterRequest, cancel: threading.Event | None = None) -> FilterResult:
        """Compute a visualisation (gradient ascent) and remember it."""
        started = time.perf_counter()
        result = compute_filters(self.explainer, request, cancel)
        self.metrics.explanation_time.labels(f"filters_{request.mode}").observe(time.perf_counter() - started)
        self.filter_store.put(request, result)
        return result

    def report(self) -> ModelReport:
        """Architecture table, training history, confusion matrix and faithfulness, as exported."""
        read = lambda role, default: read_json(self.model_dir, self.manifest, role, default)  # noqa: E731
        return ModelReport(model=self.info(), manifest=self.manifest,
                           architecture=[ArchitectureRow(**row) for row in read("architecture", [])],
                           history=read("history", []),
                           confusion_matrix=read("confusion_matrix", {"classes": self.classes}),
                           faithfulness=read("faithfulness", {}).get("rows", []))

    def explanation_methods(self) -> list[ExplanationMethod]:
        measured = {row["method"]: row
                    for row in read_json(self.model_dir, self.manifest, "faithfulness", {}).get("rows", [])}
        return [ExplanationMethod(name=name, description=method.description, uses_layer=method.uses_layer,
                                  faithfulness={k: v for k, v in measured[name].items() if k != "cascade"}
                                  if name in measured else None,
                                  passes_sanity_check=measured[name]["passes_sanity_check"] if name in measured else None)
                for name, method in METHODS.items()]
