"""The plain FastAPI server users write first, for side-by-side benchmarks (`python -m bench.serve --compare`):
one forward pass per request, on the event loop, with the same TorchScript model and the same decoding.

`python -m bench.baseline --model DIR --port P`
"""

import argparse
import io
import warnings

import numpy as np
import torch
import uvicorn
from fastapi import FastAPI, File, UploadFile
from PIL import Image

from service.runtime.modeldir import Artifact, load_manifest


def create_app(model_dir: str) -> FastAPI:
    manifest = load_manifest(model_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model = torch.jit.load(f"{model_dir}/{manifest.artifacts[Artifact.TORCHSCRIPT].path}").eval()
    size = (manifest.input.width, manifest.input.height)
    app = FastAPI()

    @app.get("/readyz")
    async def ready() -> dict:
        return {"status": "ready"}

    @app.post("/predict")
    async def predict(files: list[UploadFile] = File(...)) -> dict:
        images = []
        for upload in files:
            with Image.open(io.BytesIO(await upload.read())) as image:
                images.append(np.asarray(image.convert("L").resize(size, Image.BILINEAR)))
        with torch.inference_mode():
            probabilities = model(torch.from_numpy(np.stack(images)[:, None])).numpy()
        return {"predictions": [{"filename": upload.filename, "label": manifest.classes[int(row.argmax())],
                                 "probabilities": dict(zip(manifest.classes, row.tolist()))}
                                for upload, row in zip(files, probabilities)]}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.baseline", description=__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    uvicorn.run(create_app(args.model), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
