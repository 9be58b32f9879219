"""An int8 ONNX artifact: static quantization with ONNX Runtime's tools, calibrated on validation faces, kept
only when it stays within `MAX_ACCURACY_DROP` of the fp32 model on the same split."""

import tempfile
from pathlib import Path

import numpy as np
import onnxruntime
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_static,
)

from schemas.manifest import QuantizationInfo
from service.runtime.modeldir import Artifact, add_artifact, artifact_path, load_manifest
from training.data import has_split, load_split
from training.errors import TrainingError
from training.evaluate import predict_batched

MAX_ACCURACY_DROP = 0.005  # 0.5 points
CALIBRATION_BATCH = 32


class QuantizationRefused(TrainingError):
    """The int8 model loses too much accuracy to be exported."""


class _Faces(CalibrationDataReader):
    def __init__(self, images: np.ndarray):
        self.batches = iter([{"images": images[i:i + CALIBRATION_BATCH]}
                             for i in range(0, len(images), CALIBRATION_BATCH)])

    def get_next(self):
        return next(self.batches, None)


def _accuracy(path: Path, images: np.ndarray, labels: np.ndarray) -> float:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    probabilities = predict_batched(lambda batch: session.run(None, {"images": batch})[0], images)
    return float((probabilities.argmax(1) == labels).mean())


def quantize_model_dir(model_dir: Path, data: str, calibration_images: int = 512) -> QuantizationInfo:
    """Write model.int8.onnx beside model.onnx and record it (sha256, accuracies) in the manifest; raise
    QuantizationRefused when it loses more than 0.5 points on the split (val where the data has one)."""
    model_dir = Path(model_dir)
    manifest = load_manifest(model_dir)
    split = "val" if has_split(data, "val") else "train"
    faces = load_split(data, split, manifest.input.height)
    images, labels = faces.images.unsqueeze(1).numpy(), faces.labels.numpy()
    # Calibrate on a spread of the split (every k-th face), then judge on the whole split.
    calibration = images[:: max(1, len(images) // calibration_images)][:calibration_images]
    fp32_path, int8_path = artifact_path(model_dir, manifest, Artifact.ONNX), model_dir / Artifact.ONNX_INT8.file
    with tempfile.TemporaryDirectory() as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared))
        quantize_static(str(prepared), str(int8_path), _Faces(calibration),
                        quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, per_channel=True,
                        calibrate_method=CalibrationMethod.Percentile,
                        extra_options={"CalibPercentile": 99.99})
    fp32 = _accuracy(fp32_path, images, labels)
    int8 = _accuracy(int8_path, images, labels)
    info = QuantizationInfo(split=split, samples=len(labels), calibration_images=len(calibration),
                            accuracy_fp32=fp32, accuracy_int8=int8)
    if fp32 - int8 > MAX_ACCURACY_DROP:
        int8_path.unlink()
        raise QuantizationRefused(f"int8 model refused: {int8:.4f} accuracy on {data} {split} against {fp32:.4f} "
                                  f"in fp32, a drop of more than {MAX_ACCURACY_DROP * 100:.1f} points")
    manifest.quantization = info
    add_artifact(model_dir, manifest, Artifact.ONNX_INT8)
    return info
