"""Inference backends: each turns a uint8 batch (N x 1 x H x W) into probabilities (N x 7)."""

import warnings
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from schemas.manifest import Manifest

BACKENDS = ("torchscript", "onnx")


class Backend(Protocol):
    name: str
    device: str

    def predict(self, images: np.ndarray) -> np.ndarray: ...


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
        self.session = onnxruntime.InferenceSession(str(path), providers=providers)
        active = self.session.get_providers()[0]
        self.device = "cuda" if active == "CUDAExecutionProvider" else "cpu"

    def predict(self, images: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"images": np.ascontiguousarray(images)})[0]


def load_backend(model_dir: Path, manifest: Manifest, backend: str, device: torch.device,
                 half: bool = False) -> Backend:
    if backend == "torchscript":
        return TorchScriptBackend(Path(model_dir) / manifest.artifacts["torchscript"].path, device, half)
    if backend == "onnx":
        return OnnxBackend(Path(model_dir) / manifest.artifacts["onnx"].path, device)
    raise ValueError(f"unknown backend {backend!r}: expected one of {', '.join(BACKENDS)}")
