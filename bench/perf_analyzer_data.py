"""`python -m bench.perf_analyzer_data --model DIR --out DIR`: input files for Triton's perf_analyzer.

perf_analyzer fills every input of a model with random data unless told otherwise, but the classifier takes
either `images` or `faces`, not both, and random bytes are no image. This writes two `--input-data` files, each
naming one input: `faces.json` (one face, UINT8 1 x H x W) and `images.json` (one PNG; perf_analyzer's `b64`
is the tensor's binary form, so the PNG carries BYTES' 4-byte length prefix).
"""

import argparse
import base64
import io
import json
import struct
from pathlib import Path

import numpy as np
from PIL import Image

from schemas.manifest import MANIFEST_FILE, Manifest
from training.synthetic import render_face


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.perf_analyzer_data", description=__doc__)
    parser.add_argument("--model", type=Path, default=Path("models/default"), help="model directory (for H x W)")
    parser.add_argument("--image", type=Path, help="a face image to send (default: a synthetic face)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/perf_analyzer"))
    args = parser.parse_args()
    spec = Manifest.model_validate_json((args.model / MANIFEST_FILE).read_text()).input
    picture = Image.open(args.image) if args.image else Image.fromarray(render_face("happy", np.random.default_rng(0))[0])
    encoded = io.BytesIO()
    picture.save(encoded, format="PNG")
    png = encoded.getvalue()
    face = np.asarray(picture.convert("L").resize((spec.width, spec.height), Image.BILINEAR))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "faces.json").write_text(json.dumps({"data": [{"faces": face.reshape(-1).tolist()}]}))
    (args.out / "images.json").write_text(json.dumps({"data": [{"images": {
        "b64": base64.b64encode(struct.pack("<I", len(png)) + png).decode()}}]}))
    print(f"wrote {args.out / 'faces.json'} and {args.out / 'images.json'}")


if __name__ == "__main__":
    main()
