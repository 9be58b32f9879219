"""An int8 ONNX artifact: static quantization with ONNX Runtime's tools, calibrated on validation faces.

It is kept when it stays within `MAX_ACCURACY_DROP` of the fp32 model on the same split and marked servable (the
CPU's default, `FER_PRECISION=auto`) when it stays within `MAX_SERVABLE_GAP` with the TTA the service applies. The
activation ranges of the calibration are kept too (ONNX Runtime's calibration cache): shipped beside the weights,
they let `export --weights` quantize the same int8 model again where there is no data, and the accuracy measured at
shipping holds for it when its sha256 is the one measured.
"""

import shutil
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
from service.runtime.modeldir import Artifact, add_artifact, artifact_path, file_sha256, load_manifest
from training.data import has_split, load_split
from training.errors import TrainingError
from training.evaluate import predict_batched

MAX_ACCURACY_DROP = 0.005  # 0.5 points: an int8 model that loses more is not kept
MAX_SERVABLE_GAP = 0.003  # 0.3 points with the served TTA: served by default on the CPU
CALIBRATION_BATCH = 32


class QuantizationRefused(TrainingError):
    """The int8 model loses too much accuracy to be exported, or cannot be vouched for."""


class _Faces(CalibrationDataReader):
    def __init__(self, images: np.ndarray):
        self.batches = iter([{"images": images[i:i + CALIBRATION_BATCH]}
                             for i in range(0, len(images), CALIBRATION_BATCH)])

    def get_next(self):
        return next(self.batches, None)


def _accuracy(path: Path, images: np.ndarray, labels: np.ndarray, tta: str) -> float:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    probabilities = predict_batched(lambda batch: session.run(None, {"images": batch})[0], images, tta)
    return float((probabilities.argmax(1) == labels).mean())


def _quantize(fp32_path: Path, int8_path: Path, cache: Path, calibration: np.ndarray | None) -> None:
    """int8 QDQ model of `fp32_path`; activation ranges from `calibration` faces (written to `cache`), or read from
    `cache` when no faces are given."""
    with tempfile.TemporaryDirectory() as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared))
        quantize_static(str(prepared), str(int8_path), None if calibration is None else _Faces(calibration),
                        quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, per_channel=True,
                        calibrate_method=CalibrationMethod.Percentile,
                        extra_options={"CalibPercentile": 99.99}, calibration_cache_path=str(cache))


def quantize_model_dir(model_dir: Path, data: str, calibration_images: int = 512) -> QuantizationInfo:
    """Write model.int8.onnx (and its calibration) beside model.onnx and record it in the manifest, with its accuracy
    against fp32 on the split (val where the data has one), with the manifest's TTA and without; raise
    QuantizationRefused when it loses more than 0.5 points there."""
    model_dir = Path(model_dir)
    manifest = load_manifest(model_dir)
    split = "val" if has_split(data, "val") else "train"
    faces = load_split(data, split, manifest.input.height)
    images, labels = faces.images.unsqueeze(1).numpy(), faces.labels.numpy()
    # Calibrate on a spread of the split (every k-th face), then judge on the whole split.
    calibration = images[:: max(1, len(images) // calibration_images)][:calibration_images]
    fp32_path, int8_path = artifact_path(model_dir, manifest, Artifact.ONNX), model_dir / Artifact.ONNX_INT8.file
    cache = model_dir / Artifact.INT8_CALIBRATION.file
    cache.unlink(missing_ok=True)  # a cache left there would be read instead of calibrating
    _quantize(fp32_path, int8_path, cache, calibration)
    accuracy = {(precision, tta): _accuracy(path, images, labels, tta)
                for precision, path in (("fp32", fp32_path), ("int8", int8_path)) for tta in {manifest.tta, "none"}}
    fp32, int8 = accuracy["fp32", manifest.tta], accuracy["int8", manifest.tta]
    if fp32 - int8 > MAX_ACCURACY_DROP:
        int8_path.unlink()
        cache.unlink()
        raise QuantizationRefused(f"int8 model refused: {int8:.4f} accuracy on {data} {split} (tta {manifest.tta}) "
                                  f"against {fp32:.4f} in fp32, a drop of more than {MAX_ACCURACY_DROP * 100:.1f} "
                                  "points")
    info = QuantizationInfo(split=split, samples=len(labels), calibration_images=len(calibration), tta=manifest.tta,
                            accuracy_fp32=fp32, accuracy_int8=int8,
                            accuracy_fp32_without_tta=accuracy["fp32", "none"],
                            accuracy_int8_without_tta=accuracy["int8", "none"],
                            servable=fp32 - int8 <= MAX_SERVABLE_GAP, int8_sha256=file_sha256(int8_path))
    return _record(model_dir, info)


def requantize_model_dir(model_dir: Path, cache: Path, measured: QuantizationInfo) -> QuantizationInfo:
    """The int8 model quantized again from a shipped calibration `cache`, without data: recorded with the accuracy
    `measured` at shipping when it is the same model (its sha256); QuantizationRefused when it is not (other library
    versions make another graph), which leaves the directory without int8."""
    model_dir = Path(model_dir)
    manifest = load_manifest(model_dir)
    int8_path, copied = model_dir / Artifact.ONNX_INT8.file, model_dir / Artifact.INT8_CALIBRATION.file
    shutil.copyfile(cache, copied)
    try:
        _quantize(artifact_path(model_dir, manifest, Artifact.ONNX), int8_path, copied, None)
    except (ValueError, KeyError, RuntimeError) as error:  # a cache this onnxruntime cannot use, or another graph
        int8_path.unlink(missing_ok=True)
        copied.unlink()
        raise QuantizationRefused(f"{cache.name} cannot quantize this model here ({error})") from None
    if file_sha256(int8_path) != measured.int8_sha256:
        int8_path.unlink()
        copied.unlink()
        raise QuantizationRefused(f"the int8 model quantized from {cache.name} differs from the one measured when the "
                                  "weights were shipped (other onnx/onnxruntime/torch versions?): not exported; "
                                  "`export --int8 --data DIR` measures a new one")
    return _record(model_dir, measured)


def _record(model_dir: Path, info: QuantizationInfo) -> QuantizationInfo:
    manifest = load_manifest(model_dir)
    manifest.quantization = info
    add_artifact(model_dir, manifest, Artifact.ONNX_INT8)
    add_artifact(model_dir, manifest, Artifact.INT8_CALIBRATION)
    return info
