import time

import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Query

from schemas.api import ClassProbability, ErrorResponse, FaceBox, FacePrediction, ImagePrediction, PredictResponse
from service.batching import DynamicBatcher
from service.deps import Uploaded, get_batcher, get_images, get_model
from service.model import FerModel
from service.runtime.photos import FoundFace

router = APIRouter(tags=["predict"])

IMAGES_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": {"type": "object", "required": ["files"], "properties": {
                "files": {"type": "array", "minItems": 1, "items": {"type": "string", "format": "binary"}}}}},
            "application/json": {"schema": {"$ref": "#/components/schemas/ImagesRequest"}},
        },
    }
}
ERRORS = {status: {"model": ErrorResponse} for status in (400, 404, 413, 415, 422, 503)}


@router.post("/predict", response_model=PredictResponse, openapi_extra=IMAGES_BODY, responses=ERRORS)
async def predict(top_k: int | None = Query(None, ge=1, description="Also list the k most likely"),
                  uploaded: Uploaded = Depends(get_images),
                  model: FerModel = Depends(get_model), batcher: DynamicBatcher = Depends(get_batcher)) -> PredictResponse:
    """Expression probabilities for each face of one or many images (multipart `files` or JSON base64 `images`).

    Faces are found first (`faces=auto`); all faces of all concurrent requests go through the model together."""
    if top_k is not None and top_k > len(model.classes):
        raise HTTPException(422, f"query parameter `top_k`: {top_k} is more than the model's {len(model.classes)} "
                                 "classes")
    started = time.perf_counter()
    crops = uploaded.crops
    probabilities, queue_ms, inference_ms = np.zeros((0, len(model.classes)), dtype=np.float32), 0.0, 0.0
    if len(crops):
        result = await batcher.submit(crops)  # a full queue or a draining service: 503 (service/errors.py)
        probabilities, queue_ms, inference_ms = result.probabilities, result.queue_s * 1000, result.inference_s * 1000
    model.metrics.images.labels("/predict").inc(len(crops))
    rows = iter(probabilities.tolist())
    predictions = [ImagePrediction(filename=photo.filename, width=photo.width, height=photo.height,
                                   faces_truncated=photo.truncated, reason=photo.reason,
                                   faces=[_prediction(face, next(rows), top_k, model.classes) for face in photo.faces])
                   for photo in uploaded.photos]
    return PredictResponse(model=model.info(), predictions=predictions, timing_ms={
        "decode": round(uploaded.decode_ms, 3), "queue": round(queue_ms, 3), "inference": round(inference_ms, 3),
        "total": round(uploaded.decode_ms + (time.perf_counter() - started) * 1000, 3)})


def face_fields(face: FoundFace) -> dict:
    x, y, width, height = face.box
    return {"box": FaceBox(x=x, y=y, width=width, height=height), "detection_score": face.score,
            "source": face.source}


def _prediction(face: FoundFace, probabilities: list[float], top_k: int | None, classes: list[str]) -> FacePrediction:
    index = max(range(len(classes)), key=probabilities.__getitem__)
    ranked = sorted(range(len(classes)), key=probabilities.__getitem__, reverse=True)[:top_k] if top_k else None
    return FacePrediction(**face_fields(face), label=classes[index], index=index, confidence=probabilities[index],
                          probabilities=dict(zip(classes, probabilities)),
                          top_k=[ClassProbability(label=classes[i], probability=probabilities[i]) for i in ranked]
                          if ranked else None)
