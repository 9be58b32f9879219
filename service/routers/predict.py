import time

from fastapi import APIRouter, Depends, HTTPException, Query

from schemas.api import ClassProbability, ErrorResponse, ImagesRequest, Prediction, PredictResponse
from schemas.labels import CLASSES
from service.batching import DynamicBatcher, QueueFullError, ShuttingDownError
from service.deps import Uploaded, get_batcher, get_images, get_model
from service.model import FerModel

router = APIRouter(tags=["predict"])

IMAGES_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": {"type": "object", "properties": {
                "files": {"type": "array", "items": {"type": "string", "format": "binary"}}}}},
            # Inline: a $ref would dangle, as no route takes ImagesRequest as a declared body parameter.
            "application/json": {"schema": ImagesRequest.model_json_schema()},
        },
    }
}
ERRORS = {status: {"model": ErrorResponse} for status in (400, 404, 413, 415, 422, 503)}


@router.post("/predict", response_model=PredictResponse, openapi_extra=IMAGES_BODY, responses=ERRORS)
async def predict(top_k: int | None = Query(None, ge=1, le=len(CLASSES), description="Also list the k most likely"),
                  uploaded: Uploaded = Depends(get_images),
                  model: FerModel = Depends(get_model), batcher: DynamicBatcher = Depends(get_batcher)) -> PredictResponse:
    """Expression probabilities for one or many images (multipart `files` or JSON base64 `images`)."""
    started = time.perf_counter()
    try:
        result = await batcher.submit(uploaded.images)
    except (QueueFullError, ShuttingDownError) as error:
        raise HTTPException(503, f"try again shortly: {error}", headers={"Retry-After": "1"}) from None
    model.metrics.images.labels("/predict").inc(len(uploaded.images))
    predictions = [_prediction(name, row, top_k) for name, row in zip(uploaded.filenames, result.probabilities.tolist())]
    return PredictResponse(model=model.info(), predictions=predictions, timing_ms={
        "decode": round(uploaded.decode_ms, 3), "queue": round(result.queue_s * 1000, 3), "inference": round(result.inference_s * 1000, 3),
        "total": round(uploaded.decode_ms + (time.perf_counter() - started) * 1000, 3)})


def _prediction(filename: str, probabilities: list[float], top_k: int | None) -> Prediction:
    index = max(range(len(CLASSES)), key=probabilities.__getitem__)
    ranked = sorted(range(len(CLASSES)), key=probabilities.__getitem__, reverse=True)[:top_k] if top_k else None
    return Prediction(filename=filename, label=CLASSES[index], index=index, confidence=probabilities[index],
                      probabilities=dict(zip(CLASSES, probabilities)),
                      top_k=[ClassProbability(label=CLASSES[i], probability=probabilities[i]) for i in ranked]
                      if ranked else None)
