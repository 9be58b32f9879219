"""The served model, KServe style: `load`, `decode` (and `detect`, `finish`), `predict`, `explain`; no HTTP in here.

It puts the runtime layer (model directory, backends, explainer, filter store) together with the service's
settings and metrics.
"""

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from schemas.api import ArchitectureRow, ExplanationMethod, ModelInfo, ModelReport
from schemas.manifest import Manifest
from service.runtime.images import decode_image, decode_photo
from service.metrics import Metrics
from service.runtime.backends import Backend, load_backend, resolve_device, serving_precision
from service.runtime.explain import METHODS, Explainer
from service.faces import DetectedFace, Detector, make_detector
from service.runtime.filters import FilterRequest, FilterResult, FilterStore, compute_filters
from service.runtime.modeldir import Artifact, ModelDirError, artifact_path, load_eager_model, load_manifest, read_json
from service.photos import FaceOptions, FoundFace, Pending, Photo, finish, is_face_crop, prepare
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
        self.precision = "fp32"
        self.detector: Detector | None = None
        self.ready = False

    @property
    def classes(self) -> list[str]:
        return self.manifest.classes

    # --- load -------------------------------------------------------------------------------------
    def load(self) -> None:
        """Verify the artifacts, load the backend and the explainer, warm both up."""
        self.manifest = load_manifest(self.model_dir)
        device = resolve_device(self.settings.device)
        self.precision = serving_precision(self.settings.precision, device, self.manifest, self.settings.backend)
        self.backend, self.backend_throughput = load_backend(self.model_dir, self.manifest, self.settings.backend,
                                                             device, self.precision, self.settings.max_batch_size)
        for name, images_per_second in self.backend_throughput.items():
            self.metrics.backend_throughput.labels(name).set(images_per_second)
        self.tta = self.manifest.tta if self.settings.tta == "manifest" else self.settings.tta
        self.explainer = Explainer(load_eager_model(self.model_dir, self.manifest, device),
                                   self.manifest.architecture, device)
        self.detector = make_detector(self.settings.face_detector)
        self.detection_workers = self._detection_workers()
        self.filter_store = FilterStore(self.model_dir, self.manifest.version, self.settings.filter_cache_size)
        if device.type == "cuda":
            self.metrics.watch_gpu_memory(device)
        self.warm_up()
        info = self.info()
        self.metrics.model_info.info({"name": info.name, "version": info.version, "backend": info.backend,
                                      "device": info.device, "tta": self.tta, "precision": self.precision})
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
        self.detector.detect([np.full((96, 96, 3), 128, dtype=np.uint8)], self.settings.min_face_size)

    def info(self) -> ModelInfo:
        return ModelInfo(name=self.manifest.name, version=self.manifest.version, backend=self.backend.name,
                         device=self.backend.device, tta=self.tta, precision=self.precision,
                         backend_throughput=self.backend_throughput)

    # --- preprocess / predict ------------------------------------------------------------------------
    def face_mode(self, declared: tuple[int, int] | None, faces: str) -> str:
        """How an upload's faces are found (`faces`: auto, detect or none): under `auto`, a face crop (its header's
        `declared` size is small and square) is taken whole (`none`), anything else is detected."""
        if faces == "auto":
            return "none" if is_face_crop(declared, self.settings.whole_image_max_side) else "detect"
        return faces

    def decode(self, name: str, data: bytes, faces: str, keep_upright: bool = False) -> Photo | Pending:
        """One upload decoded: taken whole (`faces` none: a Photo of one face) or made ready for the detector
        (detect: Pending, which `finish` turns into a Photo once the detector has run). `keep_upright` keeps the
        decoded image, for drawing overlays. Raises ImageError."""
        size = self.manifest.input.height
        if faces == "none":  # the fast path: decode straight to the model's input size
            grey, (width, height) = decode_image(data, name, (size, size), self.settings.max_image_pixels)
            return Photo(name, width, height, [FoundFace((0, 0, width, height), None, "whole_image")],
                         grey[None, None], upright=grey if keep_upright else None)
        image, original = decode_photo(data, name, self.settings.max_image_pixels, self.settings.photo_max_pixels)
        return prepare(image, name, original, self.face_options)

    def _detection_workers(self) -> int:
        """How many batches the detection batcher runs at once: FER_DETECT_WORKERS, by default one per torch thread
        (a core's worth each; at most one per decode slot, as each batch holds one) where the detector's calls may
        overlap; one where they may not, and more asked for is refused."""
        asked = self.settings.detect_workers
        if not self.detector.concurrent_calls:
            if asked not in (None, 1):
                raise ValueError(f"FER_DETECT_WORKERS={asked}: the {self.detector.name} detector's calls may not "
                                 "overlap; leave it unset (one worker)")
            return 1
        return asked or max(1, min(torch.get_num_threads(), self.settings.max_decodes_in_flight))

    def detect(self, images: np.ndarray, key: tuple) -> list[list[DetectedFace]]:
        """The faces in a batch of same-size detection images (what the detection batcher calls, on as many
        threads at once as `detection_workers` says); `key` is their Pending.key."""
        return self.detector.detect(list(images), key[1])

    def finish(self, pending: Pending, found: list[DetectedFace], keep_upright: bool = False) -> Photo:
        photo = finish(pending, found, self.face_options)
        self.metrics.faces_per_image.observe(len(photo.faces))
        if not keep_upright:
            photo.upright = None
        return photo

    @property
    def face_options(self) -> FaceOptions:
        settings = self.settings
        min_score = self.detector.default_min_score if settings.min_face_score is None else settings.min_face_score
        return FaceOptions(self.manifest.input.height, settings.min_face_size, settings.max_faces_per_image,
                           settings.detect_max_pixels, min_score)

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Probabilities N x classes for a uint8 batch (what the batcher calls), with the model's TTA and that TTA's
        temperature."""
        return predict_with_tta(self.backend.predict, images, self.tta, self.manifest.temperature(self.tta))

    # --- explain -------------------------------------------------------------------------------------
    def saliency(self, images: np.ndarray, method: str, target: int | torch.Tensor | None, layer: str | None = None,
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
        read = lambda artifact, default: read_json(self.model_dir, self.manifest, artifact, default)  # noqa: E731
        return ModelReport(model=self.info(), manifest=self.manifest,
                           architecture=[ArchitectureRow(**row) for row in read(Artifact.ARCHITECTURE, [])],
                           history=read(Artifact.HISTORY, []),
                           confusion_matrix=read(Artifact.CONFUSION_MATRIX, {"classes": self.classes}),
                           faithfulness=read(Artifact.FAITHFULNESS, {}).get("rows", []))

    def report_page(self) -> Path | None:
        """The HTML report (model card, the five questions, the derivations) that `python -m training report`
        stored in the model directory, if it did."""
        path = artifact_path(self.model_dir, self.manifest, Artifact.REPORT)
        return path if path and path.is_file() else None

    def explanation_methods(self) -> list[ExplanationMethod]:
        measured = {row["method"]: row
                    for row in read_json(self.model_dir, self.manifest, Artifact.FAITHFULNESS, {}).get("rows", [])}
        return [ExplanationMethod(name=name, description=method.description, uses_layer=method.uses_layer,
                                  faithfulness={k: v for k, v in measured[name].items() if k != "cascade"}
                                  if name in measured else None,
                                  passes_sanity_check=measured[name]["passes_sanity_check"] if name in measured else None)
                for name, method in METHODS.items()]


def torch_worker_pool(workers: int, name: str) -> ThreadPoolExecutor:
    """`workers` threads, started now, that share torch's threads between them: each runs its operations on
    1/`workers` of them (at least one). MTCNN's small layers run 1.2x faster on two threads than on one here, while
    two batches on a thread each detect 1.6x the photos per second of one batch on two threads. Under OpenMP each
    thread keeps its own count, and a thread takes torch's process-wide count when it first runs an operation: that
    count is set back once these threads hold theirs."""
    budget = torch.get_num_threads()

    def own_count(threads: int) -> None:
        torch.set_num_threads(threads)
        torch.get_num_threads()  # a thread's first use fixes its count: now, while the process's is `threads`

    # Every thread is started now, each task holding its thread until all have started: a thread started later
    # would set the process's count down again.
    started = threading.Barrier(workers, timeout=30)
    pool = ThreadPoolExecutor(workers, thread_name_prefix=name, initializer=own_count,
                              initargs=(max(1, budget // workers),))
    for future in [pool.submit(started.wait) for _ in range(workers)]:
        future.result()  # an initializer's failure breaks the pool: raised here, not left to hang
    torch.set_num_threads(budget)
    return pool
