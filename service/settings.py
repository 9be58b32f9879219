"""All service settings, read from environment variables prefixed `FER_` (e.g. FER_MAX_BATCH_SIZE=32)."""

import importlib.util
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


# MTCNN where facenet-pytorch is installed (`make install` and the images install it), else OpenCV's Haar
# cascades; found without importing either, so that reading the settings loads no detector.
DEFAULT_DETECTOR = "mtcnn" if importlib.util.find_spec("facenet_pytorch") is not None else "haar"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FER_", protected_namespaces=())

    model_dir: Path = Field(Path("models/default"), description="Directory made by `python -m training`.")
    backend: Literal["auto", "torchscript", "onnx"] = Field(
        "auto", description="What serves /predict; auto measures each at start and keeps the fastest here.")
    tta: Literal["manifest", "none", "flip", "crops"] = Field(
        "manifest", description="Test-time augmentation of /predict: the model directory's choice, or another (each "
                                "calibrated with its own temperature from the manifest).")
    device: Literal["auto", "cuda", "cpu"] = "auto"
    precision: Literal["auto", "fp32", "fp16", "int8"] = Field(
        "auto", description="auto: int8 on the CPU where the export marked the quantized ONNX model servable (within "
                            "0.3 points of fp32 with the served TTA) and the CPU has VNNI (without it onnxruntime's "
                            "int8 saturates), else fp32; fp16: TorchScript on CUDA; int8: the "
                            "ONNX model quantized at export (--int8).")
    host: str = "0.0.0.0"
    port: int = 8000
    log_level: str = "info"
    max_batch_size: int = Field(64, ge=1, description="Most images in one forward pass.")
    batch_wait_ms: float = Field(2.0, ge=0, description="How long the first request of a batch waits for company.")
    queue_limit: int = Field(2048, ge=1, description="Most faces waiting for inference; beyond it, 503 (a request "
                                                     "with more faces than it holds: 413).")
    max_images_per_request: int = Field(64, ge=1)
    max_request_bytes: int = Field(32 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(25_000_000, ge=1, description="Width x height; larger images get 413.")
    explain_workers: int = Field(1, ge=1, description="Explanations computed at once, on their own threads.")
    explain_queue: int = Field(4, ge=0, description="Explanation requests that may wait; beyond them, 503.")
    max_explanation_passes: int = Field(2048, ge=1, description="Budget of one /saliency request (or "
                                                                "/video with saliency, over all its frames): faces x "
                                                                "forward passes per face of the method.")
    max_filter_cost: int = Field(64 * 128 * 48 * 48, ge=1, description="Budget of one uncached /filters "
                                                                       "request: filters x steps x size^2.")
    max_filters_per_request: int = Field(64, ge=1)
    face_detector: Literal["mtcnn", "haar"] = Field(
        DEFAULT_DETECTOR, description="mtcnn (facenet-pytorch's weights, installed by `make install`) or haar "
                                      "(OpenCV's cascades)")
    max_faces_per_image: int = Field(32, ge=1, description="Faces kept per image, best first; the response "
                                                           "says when more were found.")
    min_face_size: int = Field(40, ge=8, description="Smallest face side, in pixels of the uploaded image.")
    min_face_score: float | None = Field(None, ge=0, le=1, description=(
        "The least detection score a face needs; default: the detector's own (MTCNN 0.95, chosen on real photos: "
        "docs/benchmarks.md; Haar 0, its score is not a probability)."))
    detect_max_pixels: int = Field(1_000_000, ge=4096, description="Detection runs on a copy of at most this "
                                                                   "many pixels (boxes in the upload's pixels).")
    photo_max_pixels: int = Field(4_194_304, ge=4096, description="Photos are decoded to at most this many "
                                                                  "pixels (JPEGs to between half of it and it); "
                                                                  "faces are cropped from that.")
    whole_image_max_side: int = Field(256, ge=1, description="faces=auto: a roughly square image this small is a "
                                                             "face crop, taken whole without detection (its header "
                                                             "says, before decoding); larger images are detected.")
    max_png_pixels: int = Field(4_000_000, ge=10_000, description="Largest PNG any endpoint draws.")
    max_filter_steps: int = Field(512, ge=1)
    filter_cache_size: int = Field(128, ge=0, description="Filter visualisations kept in memory.")
    graceful_timeout_s: float = Field(30.0, ge=0, description="On SIGTERM, how long in-flight work may finish.")
    max_decodes_in_flight: int = Field(8, ge=1, description=(
        "Files decoded, in face detection or being cropped at once, on worker threads (bounds the memory of decoded "
        "photos); small face crops taken whole (faces=none, or auto's crops) are decoded on the event loop."))
    detect_batch_size: int = Field(8, ge=1, description="Most photos in one batch of face detection (photos of "
                                                        "one size and smallest face batch together).")
    detect_workers: int | None = Field(None, ge=1, description=(
        "Batches of face detection run at once, each on its own thread with its share of the cores: by default one "
        "per torch thread (at most one per decode slot) for MTCNN (two batches on a thread each detect 1.6x the "
        "photos per second of one batch on two threads here), and always one for the Haar cascade, whose calls may "
        "not overlap."))
    detect_wait_ms: float = Field(5.0, ge=0, description="How long the first photo of a detection batch waits "
                                                         "for company (detection takes 20-60 ms a photo here).")
    max_video_bytes: int = Field(512 * 1024 * 1024, ge=1024, description="Largest /video upload (spooled to a "
                                                                          "temporary file, not held in memory).")
    max_video_seconds: float = Field(600.0, gt=0, description="Longest span of one video read per request, from "
                                                              "`start`.")
    max_video_frames: int = Field(3000, ge=1, description="Most sampled frames per /video request.")
    max_video_pixels: int = Field(1_000_000, ge=4096, description="Video frames are decoded reduced to at most this "
                                                                  "many pixels (boxes stay in the stored frame's).")
    max_videos_in_flight: int = Field(2, ge=1, description="Videos analysed at once; beyond them, 503.")
    video_smoothing_s: float = Field(1.0, ge=0, description="Default time constant of /video's smoothing of each "
                                                            "track's probabilities (an exponential moving average).")
    header_timeout_s: float = Field(10.0, gt=0, description="Time a connection has to send a request's headers.")
    body_timeout_s: float = Field(60.0, gt=0, description="Time a request has to send its body, after its headers.")
    max_connections: int = Field(1000, ge=1, description="Open connections; lowered to fit the descriptor limit.")
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, description="Comma-separated keys; API routes then need one.")
    api_keys_file: Path | None = Field(None, description="A file of keys, one per line (a mounted Secret).")
    metrics_require_key: bool = Field(False, description="/metrics needs a key too (when keys are set).")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated origins allowed by CORS; none by default.")

    @field_validator("api_keys", "cors_origins", mode="before")
    @classmethod
    def _comma_separated(cls, value):
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value


@lru_cache
def get_settings() -> Settings:
    return Settings()
