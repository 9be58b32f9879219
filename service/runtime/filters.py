"""Filter visualisations: what a request asks for, its cache key, the on-disk format of precomputed results
(written by `python -m training export --filters`, read by the service) and an LRU of recent results."""

import hashlib
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from service.runtime.explain import Explainer

FILTERS_DIR = "filters"
DEFAULT_FILTERS = tuple(range(16))
DEFAULT_STEPS = 64
DEFAULT_SIZE = 48
SIZES = (16, 128)  # the smallest and largest side a request may ask for
FilterMode = Literal["activation", "weights"]  # inputs found by gradient ascent, or conv1's raw kernels


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

    def cost(self) -> int:
        """Forward-and-backward passes of one image at `size`: what an admission budget counts."""
        return len(self.filters) * self.steps * self.size * self.size


@dataclass
class FilterResult:
    images: np.ndarray  # N x size x size in [0, 1]
    activations: np.ndarray  # N


def compute_filters(explainer: Explainer, request: FilterRequest, cancel=None) -> FilterResult:
    filters = list(request.filters)
    if request.mode == "weights":
        return FilterResult(explainer.conv1_weights(filters).numpy(), np.zeros(len(filters), dtype=np.float32))
    images, activations = explainer.filter_inputs(request.layer, filters, steps=request.steps, size=request.size,
                                                  cancel=cancel)
    return FilterResult(images.numpy(), activations.numpy())


class FilterStore:
    """Results by key: memory first (LRU of `capacity`), then the model directory's precomputed files."""

    def __init__(self, model_dir: Path, model_version: str, capacity: int):
        self.directory = Path(model_dir) / FILTERS_DIR
        self.model_version = model_version
        self.capacity = capacity
        self._memory: OrderedDict[str, FilterResult] = OrderedDict()
        self._lock = threading.Lock()  # requests run in worker threads

    def get(self, request: FilterRequest) -> FilterResult | None:
        key = request.key(self.model_version)
        with self._lock:
            result = self._memory.get(key)
        if result is None:
            path = self.directory / f"{key}.npz"
            if not path.is_file():
                return None
            with np.load(path) as stored:
                result = FilterResult(stored["images"], stored["activations"])
        self.put(request, result)
        return result

    def put(self, request: FilterRequest, result: FilterResult) -> None:
        if self.capacity == 0:
            return
        key = request.key(self.model_version)
        with self._lock:
            self._memory[key] = result
            self._memory.move_to_end(key)
            while len(self._memory) > self.capacity:
                self._memory.popitem(last=False)

    def save(self, request: FilterRequest, result: FilterResult) -> Path:
        """Write a precomputed result where `get` finds it."""
        path = self.directory / f"{request.key(self.model_version)}.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, images=result.images, activations=result.activations)
        return path
