"""Request and response bodies of the HTTP service."""

from typing import Any, Literal

from pydantic import BaseModel, Field

from schemas.manifest import Manifest

FacesMode = Literal["auto", "detect", "none"]
FACES_DESCRIPTION = ("auto: a face crop (at most FER_WHOLE_IMAGE_MAX_SIDE, 256 px, on its longer side and roughly "
                     "square, as its header says) is one face, taken whole without detection; faces are detected in "
                     "anything larger. detect: faces the detector finds, in every image. none: the whole image is "
                     "one face.")


class ErrorResponse(BaseModel):
    detail: str


class ProtocolErrorResponse(BaseModel):
    """The Open Inference Protocol's error body, under /v2."""

    error: str


class ImagesRequest(BaseModel):
    """JSON alternative to multipart upload."""

    images: list[str] = Field(description="Base64-encoded image files (any format Pillow reads).", min_length=1)
    filenames: list[str] | None = Field(default=None, description="Optional names, one per image, echoed back.")


class ModelInfo(BaseModel):
    name: str
    version: str
    backend: str
    device: str
    tta: str = Field("none", description="Test-time augmentation applied to predictions.")
    precision: str = Field("fp32", description="What answered: fp32, fp16 (CUDA) or int8 (the quantized ONNX model; "
                                               "FER_PRECISION=auto serves it on the CPU where the export allows it).")
    backend_throughput: dict[str, float] = Field(
        default_factory=dict, description="Images/s of each backend measured at start when FER_BACKEND=auto.")


class Readiness(BaseModel):
    status: Literal["ready", "not ready", "draining"]
    model: ModelInfo | None = None


class ClassProbability(BaseModel):
    label: str
    probability: float


class FaceBox(BaseModel):
    """In pixels of the uploaded image after its EXIF rotation (the upright image)."""

    x: int
    y: int
    width: int
    height: int


class Face(BaseModel):
    box: FaceBox
    detection_score: float | None = Field(description="The detector's confidence; null for a whole-image face.")
    source: Literal["detector", "whole_image"]


class FacePrediction(Face):
    label: str
    index: int
    confidence: float
    probabilities: dict[str, float]
    top_k: list[ClassProbability] | None = None


class ImageFaces(BaseModel):
    """One uploaded image: its size and its faces, largest-scoring first."""

    filename: str
    width: int
    height: int
    faces_truncated: bool = Field(False, description="More faces were found than FER_MAX_FACES_PER_IMAGE.")
    reason: str | None = Field(None, description="Why `faces` is empty, e.g. no face found.")


class ImagePrediction(ImageFaces):
    faces: list[FacePrediction]


class PredictResponse(BaseModel):
    model: ModelInfo
    predictions: list[ImagePrediction] = Field(description="One per uploaded image, in order.")
    timing_ms: dict[str, float]

    model_config = {"json_schema_extra": {"examples": [{
        "model": {"name": "fer-resnet18", "version": "3bf61f228871", "backend": "onnx", "device": "cpu (int8)",
                  "tta": "flip", "precision": "int8", "backend_throughput": {}},
        "predictions": [{"filename": "group.jpg", "width": 640, "height": 480, "faces_truncated": False,
                         "reason": None, "faces": [{
                             "box": {"x": 412, "y": 96, "width": 118, "height": 118}, "detection_score": 0.998,
                             "source": "detector", "label": "happy", "index": 3, "confidence": 0.91,
                             "probabilities": {"angry": 0.01, "disgust": 0.0, "fear": 0.02, "happy": 0.91,
                                               "sad": 0.02, "surprise": 0.01, "neutral": 0.03}, "top_k": None}]},
                        {"filename": "landscape.jpg", "width": 1024, "height": 512, "faces_truncated": False,
                         "reason": "no face found", "faces": []}],
        "timing_ms": {"decode": 12.1, "detect": 30.5, "queue": 1.2, "inference": 8.4, "total": 53.0}}]}}


class FaceSaliency(Face):
    target: str
    target_index: int
    predicted: str = Field(description="The class /predict gives this face (the model's TTA and calibration).")
    confidence: float
    probabilities: dict[str, float] = Field(description="As /predict gives them for this face.")
    height: int
    width: int
    saliency: list[list[float]] = Field(description="Normalised to [0, 1], at the model's input resolution, over "
                                                    "the face crop (upright, as the model saw it, not mirrored).")


class ImageSaliency(ImageFaces):
    faces: list[FaceSaliency]


class SaliencyResponse(BaseModel):
    model: ModelInfo
    method: str
    images: list[ImageSaliency] = Field(description="One per uploaded image, in order, with a map per face.")
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


class ExplanationMethod(BaseModel):
    name: str
    description: str
    uses_layer: bool = Field(description="Whether `layer` applies (Grad-CAM family).")
    faithfulness: dict[str, Any] | None = Field(
        None, description="Deletion/insertion AUC and the randomisation sanity check measured at export, "
                          "when the model directory has them.")
    passes_sanity_check: bool | None = Field(None, description="False: the maps barely change for a randomised "
                                                               "network (Adebayo et al. 2018); do not trust them.")


class ExplanationMethods(BaseModel):
    methods: list[ExplanationMethod]


class ModelReport(BaseModel):
    """The report's questions 1-3: architecture, training curves, confusion matrix; and the explanations'
    measured faithfulness."""

    model: ModelInfo
    manifest: Manifest
    architecture: list[ArchitectureRow]
    history: list[dict[str, Any]]
    confusion_matrix: dict[str, Any]
    faithfulness: list[dict[str, Any]] = Field(default_factory=list)


VideoFormat = Literal["json", "ndjson", "csv", "mp4", "png"]


class VideoInfo(BaseModel):
    """The video as its header and first frame describe it, and the span and rate sampled."""

    filename: str
    width: int = Field(description="Upright frame width, as stored (boxes are in these pixels).")
    height: int
    codec: str
    source_fps: float | None = Field(description="The stream's declared frame rate.")
    duration_s: float | None = Field(description="As the header declares it (the stream may disagree).")
    rotation: int = Field(description="Degrees counter-clockwise that turned frames upright (display matrix).")
    sampled_fps: float = Field(description="Frames analysed per second: `fps`, at most the source's.")
    start_s: float
    end_s: float | None


class VideoFace(Face):
    """One face in one sampled frame: its track, and its probabilities as /predict gives them for that frame."""

    track_id: int
    label: str = Field(description="Of the raw probabilities.")
    confidence: float
    probabilities: dict[str, float]
    smoothed: dict[str, float] = Field(description="The track's exponential moving average up to this frame.")
    smoothed_label: str
    saliency: list[list[float]] | None = Field(None, description="With `saliency=`: the map of the predicted class, "
                                                                 "as /saliency gives it for this face.")


class VideoFrameResult(BaseModel):
    index: int = Field(description="Among the sampled frames, from 0.")
    time_s: float = Field(description="From the start of the video.")
    faces: list[VideoFace]
    faces_truncated: bool = False


class TrackObservation(BaseModel):
    frame: int
    time_s: float
    box: FaceBox
    probabilities: dict[str, float]
    smoothed: dict[str, float]


class TrackSummary(BaseModel):
    id: int
    frames: int = Field(description="Sampled frames the face was seen in.")
    first_s: float
    last_s: float
    dominant: str = Field(description="The smoothed label held for the largest share of its frames.")
    share: dict[str, float] = Field(description="Fraction of its frames whose smoothed label is each class.")
    mean_probabilities: dict[str, float] = Field(description="Of the raw probabilities over its frames.")


class VideoTrack(TrackSummary):
    observations: list[TrackObservation]


class Smoothing(BaseModel):
    method: Literal["ema"] = "ema"
    time_constant_s: float = Field(description="After a gap of dt seconds a frame weighs 1 - exp(-dt / tau); "
                                               "0: no smoothing.")


class VideoSummary(BaseModel):
    frames_sampled: int
    frames_decoded: int
    tracks: list[TrackSummary]
    dominant: str | None = Field(description="Over every face of every sampled frame (smoothed labels).")
    timing_ms: dict[str, float]


class VideoResponse(BaseModel):
    model: ModelInfo
    video: VideoInfo
    smoothing: Smoothing
    frames: list[VideoFrameResult]
    tracks: list[VideoTrack]
    summary: VideoSummary
