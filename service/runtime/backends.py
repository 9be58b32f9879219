"""Inference backends: each turns a uint8 batch (N x 1 x H x W) into probabilities (N x classes).

`load_backend(..., "auto")` measures every backend that can run here on the model's own input and keeps the
fastest; an explicit name always wins.
"""

import importlib.util
import logging
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from schemas.manifest import Manifest
from service.runtime.modeldir import Artifact, artifact_path

logger = logging.getLogger(__name__)


class Backend(Protocol):
    name: str
    device: str

    def predict(self, images: np.ndarray) -> np.ndarray: ...


def cpu_has_fast_bf16() -> bool:
    """bf16 pays off on CPUs with bf16 instructions (AVX512-BF16 or AMX); elsewhere it is emulated and slower than
    fp32 (measured: 126 vs 172 img/s of training on an AVX512 Xeon without them)."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def cpu_runs_int8_exactly() -> bool:
    """onnxruntime's int8 kernels (uint8 activations x int8 weights) keep full precision only with VNNI (or AMX)
    instructions; without them (AVX2, AVX-512 without VNNI) their multiply-adds saturate: the shipped int8 model,
    as accurate as fp32 on an AVX512-VNNI EPYC, fell from 67.99 to 54.00 % PublicTest on an AVX2-only one."""
    return torch.cpu._is_vnni_supported() or torch.cpu._is_amx_tile_supported()


def resolve_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device cuda was asked for, but no CUDA device is available (use auto or cpu)")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def load_torchscript(path: Path, device: torch.device) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated upstream; it is our artifact format
        model = torch.jit.load(str(path), map_location=device)
    return model.eval()


class TorchScriptBackend:
    name = "torchscript"

    def __init__(self, path: Path, device: torch.device, half: bool = False):
        if half and device.type != "cuda":
            raise RuntimeError("half precision is only offered on CUDA")
        self.model = load_torchscript(path, device)
        self.half = half
        if half:
            self.model.half()
        self.torch_device = device
        self.device = str(device) + (" (fp16)" if half else "")

    @torch.inference_mode()
    def predict(self, images: np.ndarray) -> np.ndarray:
        batch = torch.from_numpy(images).to(self.torch_device, non_blocking=True)
        if self.half:
            probabilities = torch.softmax(self.model.logits(batch.half()).float(), dim=1)
        else:
            probabilities = self.model(batch)
        return probabilities.cpu().numpy()


class OnnxBackend:
    """ONNX Runtime, with the CUDA provider where onnxruntime-gpu is installed and CUDA was asked for."""

    name = "onnx"

    def __init__(self, path: Path, device: torch.device):
        try:
            import onnxruntime
        except ImportError:
            raise RuntimeError("backend onnx needs onnxruntime: pip install '.[cpu]' (or '.[gpu]')") from None
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()  # the same thread budget as torch's
        # Idle intra-op threads sleep rather than spin: they share the cores with decoding and the event loop.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = onnxruntime.InferenceSession(str(path), options, providers=providers)
        active = self.session.get_providers()[0]
        self.device = "cuda" if active == "CUDAExecutionProvider" else "cpu"

    def predict(self, images: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"images": np.ascontiguousarray(images)})[0]


def _torchscript(model_dir: Path, manifest: Manifest, device: torch.device, precision: str) -> Backend:
    if precision == "int8":
        raise RuntimeError("int8 is served by the onnx backend")
    return TorchScriptBackend(artifact_path(model_dir, manifest, Artifact.TORCHSCRIPT), device, precision == "fp16")


def _onnx(model_dir: Path, manifest: Manifest, device: torch.device, precision: str) -> Backend:
    if precision == "fp16":
        raise RuntimeError("fp16 is offered by the torchscript backend only")
    path = artifact_path(model_dir, manifest, Artifact.ONNX_INT8 if precision == "int8" else Artifact.ONNX)
    if path is None:
        raise RuntimeError(f"{model_dir} has no int8 model: export it with `python -m training export ... --int8`"
                           if precision == "int8" else f"{model_dir}: the manifest lists no `onnx` artifact")
    backend = OnnxBackend(path, device)
    backend.device += " (int8)" if precision == "int8" else ""
    return backend


BACKENDS: dict[str, Callable[[Path, Manifest, torch.device, str], Backend]] = {
    "torchscript": _torchscript, "onnx": _onnx}


def serving_precision(choice: str, device: torch.device, manifest: Manifest, backend: str) -> str:
    """The precision to serve: `auto` is int8 on the CPU where the export marked the int8 model servable (within 0.3
    points of fp32 with the served TTA), the backend can serve it (onnx, or auto, with onnxruntime installed) and the
    CPU runs int8 without saturating, else fp32 (always on CUDA); any other choice is taken as it is, int8 on a CPU
    that saturates it with a warning."""
    if choice == "int8" and device.type == "cpu" and not cpu_runs_int8_exactly():
        logger.warning("FER_PRECISION=int8 on a CPU without VNNI or AMX instructions: onnxruntime's int8 kernels "
                       "saturate here, and the shipped int8 model lost 14 points of accuracy on such a CPU "
                       "(FER_PRECISION=auto serves fp32 here)")
    if choice != "auto":
        return choice
    quantization = manifest.quantization
    servable = quantization is not None and quantization.servable and Artifact.ONNX_INT8 in manifest.artifacts
    onnx_here = importlib.util.find_spec("onnxruntime") is not None  # an optional extra ('.[cpu]')
    return ("int8" if device.type == "cpu" and servable and onnx_here and backend in ("auto", "onnx")
            and cpu_runs_int8_exactly() else "fp32")


def throughput(backend: Backend, manifest: Manifest, batch: int, seconds: float = 0.5) -> float:
    """Images per second of `backend` on zero images of the model's input shape, after one warm-up call."""
    images = np.zeros((batch, 1, manifest.input.height, manifest.input.width), dtype=np.uint8)
    backend.predict(images)
    calls, started = 0, time.perf_counter()
    while calls < 2 or time.perf_counter() - started < seconds:
        backend.predict(images)
        calls += 1
    return calls * batch / (time.perf_counter() - started)


def load_backend(model_dir: Path, manifest: Manifest, name: str, device: torch.device, precision: str = "fp32",
                 batch: int = 64) -> tuple[Backend, dict[str, float]]:
    """The named backend, or with `auto` the fastest here that offers `precision` (fp32, fp16 on CUDA, int8);
    and the measured images/s of each (auto only)."""
    if name != "auto":
        if name not in BACKENDS:
            raise ValueError(f"unknown backend {name!r}: expected auto or one of {', '.join(BACKENDS)}")
        return BACKENDS[name](model_dir, manifest, device, precision), {}
    candidates, measured = {}, {}
    for candidate, load in BACKENDS.items():
        try:
            candidates[candidate] = load(model_dir, manifest, device, precision)
        except RuntimeError:  # not installed here, or not offered with these options
            continue
        measured[candidate] = round(throughput(candidates[candidate], manifest, batch), 1)
    if not measured:
        raise RuntimeError(f"no backend here serves precision {precision}")
    fastest = max(measured, key=measured.get)
    return candidates[fastest], measured
