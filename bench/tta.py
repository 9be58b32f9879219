"""`python -m bench.tta [--model DIR] [--batch 64] [--repeat 20]`: what each test-time augmentation costs per face.

The model directory's backends (TorchScript fp32, ONNX Runtime fp32, ONNX Runtime int8 where the export made it),
each timed through `predict_with_tta` as the service calls it: a batch of face crops in, probabilities
out, calibrated as the service calibrates them (`Manifest.temperature`: the temperature fitted for that TTA, none
where none was). The faces are FER2013-sized noise: the cost does not depend on the pixels.
Prints ms per face (median over the repeats, one warm-up call first).
"""

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from service.runtime.backends import load_backend
from service.runtime.modeldir import Artifact, load_manifest
from service.runtime.tta import predict_with_tta

MODES = ("none", "flip", "crops")


def ms_per_face(predict, images: np.ndarray, mode: str, temperature: float, repeat: int) -> float:
    predict_with_tta(predict, images, mode, temperature)  # warm-up
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        predict_with_tta(predict, images, mode, temperature)
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times) / len(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("models/default"))
    parser.add_argument("--batch", type=int, default=64, help="faces per call")
    parser.add_argument("--repeat", type=int, default=20, help="timed calls per backend and mode")
    args = parser.parse_args()

    manifest = load_manifest(args.model)
    shape = (args.batch, 1, manifest.input.height, manifest.input.width)
    images = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    runs = [("torchscript", "fp32"), ("onnx", "fp32")]
    if Artifact.ONNX_INT8 in manifest.artifacts:
        runs.append(("onnx", "int8"))
    temperatures = ", ".join(f"{mode} {manifest.temperature(mode):.3f}" for mode in MODES)
    print(f"{args.model}: batch {args.batch}, {torch.get_num_threads()} threads, temperatures {temperatures}; "
          f"ms per face (median of {args.repeat})")
    print("| backend | " + " | ".join(MODES) + " |")
    print("| --- |" + " ---: |" * len(MODES))
    for name, precision in runs:
        try:
            backend, _ = load_backend(args.model, manifest, name, torch.device("cpu"), precision)
        except RuntimeError as error:  # e.g. onnxruntime not installed
            print(f"| {name} {precision} | " + " | ".join([str(error)] * len(MODES)) + " |")
            continue
        costs = [ms_per_face(backend.predict, images, mode, manifest.temperature(mode), args.repeat)
                 for mode in MODES]
        print(f"| {name} {precision} | " + " | ".join(f"{cost:.2f} ms" for cost in costs) + " |")


if __name__ == "__main__":
    main()
