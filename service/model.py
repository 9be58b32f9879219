"""The served model, KServe style: `load`, `preprocess`, `predict`, `explain`; no HTTP in here."""

import hashlib
import json
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from schemas.api import ArchitectureRow, ModelInfo
from schemas.labels import CLASSES
from schemas.manifest import Manifest
from service.artifacts import load_manifest, read_json
from service.backends import Backend, load_backend, load_torchscript, resolve_device
from service.explain import Explainer
from service.imaging import decode_image
from service.metrics import Metrics
from service.settings import Settings

FILTERS_DIR = "filters"  # precomputed visualisations, written by `python -m training export --filters`
DEFAULT_FILTERS = tuple(range(16))
DEFAULT_STEPS = 64
DEFAULT_SIZE = 48


@dataclass(frozen=True)
class FilterRequest:
    layer: str
    filters: tuple[int, ...]
    mode: str = "activation"
    steps: int = DEFAULT_STEPS
    size: int = DEFAULT_SIZE

    @classmethod
    def make(cls, explainer: Explainer, layer: str, filters: tuple[int, ...], mode: str = "activation",
             steps: int = DEFAULT_STEPS, size: int = DEFAULT_SIZE) -> "FilterRequest":
        """Raw kernels take no steps and have the kernel's own size, so those options do not split the cache."""
        if mode == "weights":
            return cls(layer, filters, mode, 0, explainer.layers[layer].weight.shape[-1])
        return cls(layer, filters, mode, steps, size)

    def key(self, model_version: str) -> str:
        text = json.dumps([model_version, self.layer, self.filters, self.mode, self.steps, self.size])
        return hashlib.sha256(text.encode()).hexdigest()[:24]


@dataclass
class FilterResult:
    images: np.ndarray  # N x size x size in [0, 1]
    activations: np.ndarray  # N


class FerModel:
    def __init__(self, settings: Settings, metrics: Metrics):
        self.settings = settings
        self.metrics = metrics
        self.model_dir = Path(settings.model_dir)
        self.manifest: Manifest | None = None
        self.backend: Backend | None = None
        self.explainer: Explainer | None = None
        self.ready = False
        self._explain_lock = threading.Lock()  # one explanation at a time bounds their memory
        self._filter_cache: OrderedDict[str, FilterResult] = OrderedDict()
        self._cache_lock = threading.Lock()  # requests run in a thread pool

    # --- load -------------------------------------------------------------------------------------
    def load(self) -> None:
        """Verify the artifacts, load the backend and the explainer, warm both up."""
        self.manifest = load_manifest(self.model_dir)
        device = resolve_device(self.settings.device)
        self.backend = load_backend(self.model_dir, self.manifest, self.settings.backend, device, self.settings.half)
        torchscript = self.model_dir / self.manifest.artifacts["torchscript"].path
        self.explainer = Explainer(load_torchscript(torchscript, device), device)
        if device.type == "cuda":
            self.metrics.watch_gpu_memory(device)
        self.warm_up()
        info = self.info()
        self.metrics.model_info.info({"name": info.name, "version": info.version, "backend": info.backend,
                                      "device": info.device})
        self.ready = True

    def warm_up(self) -> None:
        """First calls allocate and tune kernels; pay for them before serving."""
        shape = (1, 1, self.manifest.input.height, self.manifest.input.width)
        for batch in sorted({1, self.settings.max_batch_size}):
            self.backend.predict(np.zeros((batch, *shape[1:]), dtype=np.uint8))
        self.explainer.saliency(torch.zeros(shape, dtype=torch.uint8), "vanilla")

    def info(self) -> ModelInfo:
        return ModelInfo(name=self.manifest.name, version=self.manifest.version, backend=self.backend.name,
                         device=self.backend.device)

    # --- preprocess / predict ------------------------------------------------------------------------
    def preprocess(self, files: list[tuple[str, bytes]]) -> np.ndarray:
        """Decode each upload to the training resolution: uint8 N x 1 x H x W. Raises ImageError."""
        size = (self.manifest.input.height, self.manifest.input.width)
        return np.stack([decode_image(data, name, size, self.settings.max_image_pixels)
                         for name, data in files])[:, None]

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Probabilities N x 7 for a uint8 batch (what the batcher calls)."""
        return self.backend.predict(images)

    # --- explain -------------------------------------------------------------------------------------
    def saliency(self, images: np.ndarray, method: str, target: int | None):
        started = time.perf_counter()
        with self._explain_lock:
            result = self.explainer.saliency(torch.from_numpy(images), method, target)
        self.metrics.explanation_time.labels(method).observe(time.perf_counter() - started)
        return result

    def filters(self, request: FilterRequest) -> tuple[FilterResult, bool]:
        """The visualisation, and whether it came from the cache (memory, then precomputed files)."""
        key = request.key(self.manifest.version)
        with self._cache_lock:
            cached = self._filter_cache.get(key)
        if cached is None:
            cached = self._read_precomputed(key)
        if cached is not None:
            self.metrics.cache_hits.inc()
            self._remember(key, cached)
            return cached, True
        self.metrics.cache_misses.inc()
        started = time.perf_counter()
        with self._explain_lock:
            result = compute_filters(self.explainer, request)
        self.metrics.explanation_time.labels(f"filters_{request.mode}").observe(time.perf_counter() - started)
        self._remember(key, result)
        return result, False

    def _read_precomputed(self, key: str) -> FilterResult | None:
        path = self.model_dir / FILTERS_DIR / f"{key}.npz"
        if not path.is_file():
            return None
        with np.load(path) as stored:
            return FilterResult(stored["images"], stored["activations"])

    def _remember(self, key: str, result: FilterResult) -> None:
        if self.settings.filter_cache_size == 0:
            return
        with self._cache_lock:
            self._filter_cache[key] = result
            self._filter_cache.move_to_end(key)
            while len(self._filter_cache) > self.settings.filter_cache_size:
                self._filter_cache.popitem(last=False)

    def report(self) -> tuple[list[ArchitectureRow], list[dict], dict]:
        """Architecture table, training history and confusion matrix, as exported by the training run."""
        rows = read_json(self.model_dir, self.manifest, "architecture", [])
        return ([ArchitectureRow(**row) for row in rows], read_json(self.model_dir, self.manifest, "history", []),
                read_json(self.model_dir, self.manifest, "confusion_matrix", {"classes": list(CLASSES)}))


def compute_filters(explainer: Explainer, request: FilterRequest) -> FilterResult:
    filters = list(request.filters)
    if request.mode == "weights":
        return FilterResult(explainer.conv1_weights(filters).numpy(), np.zeros(len(filters), dtype=np.float32))
    images, activations = explainer.filter_inputs(request.layer, filters, steps=request.steps, size=request.size)
    return FilterResult(images.numpy(), activations.numpy())


def save_precomputed(model_dir: Path, version: str, request: FilterRequest, result: FilterResult) -> Path:
    path = Path(model_dir) / FILTERS_DIR / f"{request.key(version)}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, images=result.images, activations=result.activations)
    return path
