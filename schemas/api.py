"""Request and response bodies of the HTTP service."""

from typing import Any, Literal

from pydantic import BaseModel, Field

from schemas.manifest import Manifest

SaliencyMethod = Literal["vanilla", "smoothgrad", "gradcam"]


class ErrorResponse(BaseModel):
    detail: str


class ImagesRequest(BaseModel):
    """JSON alternative to multipart upload."""

    images: list[str] = Field(description="Base64-encoded image files (any format Pillow reads).", min_length=1)
    filenames: list[str] | None = Field(default=None, description="Optional names, one per image, echoed back.")


class ModelInfo(BaseModel):
    name: str
    version: str
    backend: str
    device: str


class Readiness(BaseModel):
    status: Literal["ready", "not ready", "draining"]
    model: ModelInfo | None = None


class ClassProbability(BaseModel):
    label: str
    probability: float


class Prediction(BaseModel):
    filename: str
    label: str
    index: int
    confidence: float
    probabilities: dict[str, float]
    top_k: list[ClassProbability] | None = None


class PredictResponse(BaseModel):
    model: ModelInfo
    predictions: list[Prediction]
    timing_ms: dict[str, float]


class SaliencyMap(BaseModel):
    filename: str
    target: str
    target_index: int
    predicted: str
    confidence: float
    height: int
    width: int
    saliency: list[list[float]] = Field(description="Normalised to [0, 1], at the model's input resolution.")


class SaliencyResponse(BaseModel):
    model: ModelInfo
    method: SaliencyMethod
    maps: list[SaliencyMap]
    timing_ms: dict[str, float]


class FilterImage(BaseModel):
    filter: int
    activation: float = Field(description="Mean activation the image reaches (0 for mode=weights).")
    image: list[list[float]] = Field(description="Normalised to [0, 1].")


class FiltersResponse(BaseModel):
    layer: str
    mode: Literal["activation", "weights"]
    steps: int
    size: int
    cached: bool
    filters: list[FilterImage]


class LayerInfo(BaseModel):
    name: str
    filters: int
    kernel_size: list[int]
    stride: list[int]


class LayersResponse(BaseModel):
    layers: list[LayerInfo]


class ArchitectureRow(BaseModel):
    name: str
    type: str
    parameters: int
    output_shape: list[int]


class ModelReport(BaseModel):
    """The report's questions 1-3: architecture, training curves, confusion matrix."""

    model: ModelInfo
    manifest: Manifest
    architecture: list[ArchitectureRow]
    history: list[dict[str, Any]]
    confusion_matrix: dict[str, Any]
