from typing import Literal

import numpy as np
from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from schemas.api import (
    FaceSaliency,
    FilterImage,
    FiltersResponse,
    ImageSaliency,
    LayerInfo,
    LayersResponse,
    SaliencyResponse,
)
from service.dataplane import SaliencyQuery, Uploaded
from service.deps import Plane, ServedModel, UploadReader, get_settings
from service.drawing import grid, grid_size, heatmap, overlay, overlay_layout, png_bytes
from service.parameters import check_layer, parse_filters
from service.photos import Photo
from service.routers.predict import ERRORS, IMAGES_BODY, face_fields
from service.runtime.explain import METHODS
from service.runtime.filters import (
    DEFAULT_FILTERS,
    DEFAULT_SIZE,
    DEFAULT_STEPS,
    SIZES,
    FilterMode,
)
from service.runtime.images import ImageError
from service.settings import Settings

router = APIRouter(tags=["explain"])
PNG = {200: {"content": {"image/png": {}}, "description": "PNG image, or JSON with format=json"}}
MethodName = Literal[tuple(METHODS)]  # the registry is the one list of methods


@router.post("/saliency", response_model=SaliencyResponse, openapi_extra=IMAGES_BODY, responses={**ERRORS, **PNG})
async def saliency(request: Request, read: UploadReader, plane: Plane, model: ServedModel,
                   settings: Settings = Depends(get_settings),
                   method: MethodName = Query("vanilla", description="; ".join(
                       f"{name}: {m.description}" for name, m in METHODS.items())),
                   target: str | None = Query(None, description="Class name or index; default: the predicted class"),
                   layer: str | None = Query(None, description="Layer for gradcam and guided_gradcam (e.g. "
                                                               "layer3, layer4.1.conv2); default: layer4"),
                   format: Literal["png", "overlay", "json"] = "png",
                   scale: int = Query(4, ge=1, le=16, description="Enlargement of PNG tiles")):
    """Where the model looks: one map per face (faces found as by /predict), all computed as one batch.

    png: the faces' maps left to right; overlay: each photo with every face's map drawn at its box, with the
    box and the predicted label (photos side by side); json: the maps per image and face. Admitted before its
    images are decoded (503 when the explanation slots are full). `GET /explanations` lists the methods with
    their measured faithfulness."""
    side = model.explainer.model.image_size

    def fits_the_picture(uploaded: Uploaded) -> None:  # refuse an oversized picture before any work
        faces = len(uploaded.crops)
        if format == "png" and faces:
            grid_size(faces, (side, side), faces, scale, settings.max_png_pixels)
        if format == "overlay":
            overlay_layout(uploaded.photos, settings.max_png_pixels)

    def draw(explained) -> tuple[bytes, dict]:  # within the request's explanation slot
        labels = [model.classes[p] for p in explained.probabilities.argmax(1)]
        return _saliency_png(explained.uploaded.photos, explained.maps, labels, format == "overlay", scale,
                             settings.max_png_pixels)

    result = await plane.saliency(read, SaliencyQuery(method, target, layer), "/saliency", request,
                                  keep_upright=True, check_uploaded=fits_the_picture,
                                  render=draw if format != "json" else None)
    classes, maps, targets = model.classes, result.maps, result.targets
    predicted = result.probabilities.argmax(1).tolist()
    confidence = result.probabilities.max(1).tolist() if len(predicted) else []
    if format == "json":
        timing = {"decode": round(result.uploaded.decode_ms, 3), "explain": round(result.explain_ms, 3)}
        rows = iter(range(len(maps)))
        images = [ImageSaliency(filename=photo.filename, width=photo.width, height=photo.height,
                                faces_truncated=photo.truncated, reason=photo.reason, faces=[
                                    FaceSaliency(**face_fields(face), target=classes[targets[i]],
                                                 target_index=targets[i], predicted=classes[predicted[i]],
                                                 confidence=confidence[i],
                                                 probabilities=dict(zip(classes, result.probabilities[i].tolist())),
                                                 height=maps[i].shape[0],
                                                 width=maps[i].shape[1], saliency=maps[i].round(decimals=4).tolist())
                                    for face, i in zip(photo.faces, rows)])
                  for photo in result.uploaded.photos]
        return SaliencyResponse(model=model.info(), method=method, timing_ms=timing, images=images)
    labels = [classes[p] for p in predicted]
    content, layout = result.rendered
    return Response(content, media_type="image/png", headers={
        "X-Targets": ",".join(classes[t] for t in targets), "X-Predicted": ",".join(labels), **layout})


def _saliency_png(photos: list[Photo], maps: np.ndarray, labels: list[str], over_input: bool, scale: int,
                  max_pixels: int) -> tuple[bytes, dict]:
    """The PNG, and for overlays where each photo lies in it: a box (x, y, w, h) of photo i is drawn at
    (left_i + x * scale_i, y * scale_i, w * scale_i, h * scale_i); scale 1 is the photo's own size."""
    if over_input:
        faces = iter(zip(maps, labels))
        row, lefts, scales = overlay(photos, [[next(faces) for _ in photo.faces] for photo in photos], max_pixels)
        return png_bytes(row), {"X-Overlay-Left": ",".join(map(str, lefts)),
                                "X-Overlay-Scale": ",".join(f"{s:.6g}" for s in scales)}
    if not len(maps):
        raise ImageError("no face found in any image: there is no map to draw (see format=json for the reasons)",
                         status=422)
    return png_bytes(grid([heatmap(m) for m in maps], len(maps), scale, max_pixels)), {}


@router.get("/filters", response_model=LayersResponse, responses={503: ERRORS[503]})
async def layers(model: ServedModel) -> LayersResponse:
    """The convolution layers whose filters can be shown, by the network's own module names."""
    return LayersResponse(layers=[
        LayerInfo(name=name, filters=conv.weight.shape[0], kernel_size=list(conv.weight.shape[2:]),
                  stride=list(conv.stride)) for name, conv in model.explainer.layers.items()])


@router.get("/filters/{layer}", response_model=FiltersResponse, responses={**ERRORS, **PNG})
async def filters(request: Request, plane: Plane, model: ServedModel, settings: Settings = Depends(get_settings),
                  layer: str = Path(description="e.g. conv1, layer1.0.conv1, layer4.1.conv2"),
                  filters: str = Query(f"{DEFAULT_FILTERS[0]}-{DEFAULT_FILTERS[-1]}",
                                       description="Indices and ranges, e.g. 0-15 or 0,3,8-11"),
                  mode: FilterMode = "activation",
                  steps: int = Query(DEFAULT_STEPS, ge=1, description="Gradient-ascent steps"),
                  size: int = Query(DEFAULT_SIZE, ge=SIZES[0], le=SIZES[1], description="Side of the generated images"),
                  format: Literal["png", "json"] = "png",
                  scale: int = Query(2, ge=1, le=16, description="Enlargement of PNG tiles"),
                  columns: int = Query(8, ge=1, le=64)):
    """The inputs that most activate each filter (gradient ascent), or conv1's raw kernels (mode=weights)."""
    check_layer(model, layer)  # an unknown path is a 404 whatever the query says
    indices = parse_filters(filters, settings.max_filters_per_request)

    def fits_the_picture(side: int) -> None:  # refuse an oversized picture before any work
        if format == "png":
            grid_size(len(indices), (side, side), columns, scale, settings.max_png_pixels)

    filtered = await plane.filters(layer, indices, mode, steps, size, request, check_request=fits_the_picture)
    result, cached = filtered.result, filtered.cached
    if format == "json":
        return FiltersResponse(layer=layer, mode=mode, steps=filtered.request.steps, size=filtered.request.size,
                               cached=cached, filters=[
            FilterImage(filter=index, activation=float(activation), image=image.round(decimals=4).tolist())
            for index, image, activation in zip(indices, result.images, result.activations)])
    tiles = [(image * 255).astype(np.uint8) for image in result.images]
    content = await run_in_threadpool(lambda: png_bytes(grid(tiles, columns, scale, settings.max_png_pixels)))
    return Response(content, media_type="image/png", headers={"X-Cache": "hit" if cached else "miss",
                                                              "X-Filters": ",".join(map(str, indices))})
