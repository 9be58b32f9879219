import time

from fastapi import APIRouter, Query

from schemas.api import ClassProbability, ErrorResponse, FaceBox, FacePrediction, ImagePrediction, PredictResponse
from service.deps import Plane, ServedModel, UploadReader
from service.parameters import InvalidParameter
from service.photos import FoundFace

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
async def predict(read: UploadReader, plane: Plane, model: ServedModel,
                  top_k: int | None = Query(None, ge=1, description="Also list the k most likely")) -> PredictResponse:
    """Expression probabilities for each face of one or many images (multipart `files` or JSON base64 `images`).

    Faces are found first (`faces=auto`); all faces of all concurrent requests go through the model together."""
    if top_k is not None and top_k > len(model.classes):
        raise InvalidParameter(f"query parameter `top_k`: {top_k} is more than the model's {len(model.classes)} "
                               "classes")
    started = time.perf_counter()
    result = await plane.classify(await read(), "/predict")
    rows = iter(result.probabilities.tolist())
    predictions = [ImagePrediction(filename=photo.filename, width=photo.width, height=photo.height,
                                   faces_truncated=photo.truncated, reason=photo.reason,
                                   faces=[_prediction(face, next(rows), top_k, model.classes) for face in photo.faces])
                   for photo in result.uploaded.photos]
    decode_ms = result.uploaded.decode_ms
    return PredictResponse(model=model.info(), predictions=predictions, timing_ms={
        "decode": round(decode_ms, 3), "queue": round(result.queue_ms, 3), "inference": round(result.inference_ms, 3),
        "total": round((time.perf_counter() - started) * 1000, 3)})


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
