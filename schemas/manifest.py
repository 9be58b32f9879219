"""`manifest.json`: what a training run exported, enough for the service to load and verify it."""

from typing import Literal

from pydantic import BaseModel, Field, field_validator

from schemas.labels import CLASSES

MANIFEST_FILE = "manifest.json"
# Test-time augmentation: none, horizontal flip, or flip x five shifted crops (ten views).
TtaMode = Literal["none", "flip", "crops"]


class InputSpec(BaseModel):
    """What the exported models take: grayscale uint8 images, batch first."""

    dtype: Literal["uint8"] = "uint8"
    layout: Literal["NCHW"] = "NCHW"
    channels: Literal[1] = 1
    height: int = Field(description="Resolution of the training images; the service resizes inputs to it.")
    width: int
    value_range: tuple[int, int] = (0, 255)


class Preprocessing(BaseModel):
    """Done inside the exported models, listed here so that readers know what happens."""

    resize_to: int = Field(description="Side of the square image the network sees.")
    resize_mode: Literal["bilinear"] = "bilinear"
    scale: float = 1.0 / 255.0
    mean: tuple[float, float, float] = Field(description="Per channel, after replication (ImageNet statistics).")
    std: tuple[float, float, float]
    replicate_channels: int = 3


class TrainingConfig(BaseModel):
    data: str
    architecture: str = "resnet18"
    epochs: int
    image_size: int
    batch_size: int
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float
    weight_decay: float
    label_smoothing: float
    mixup: float = Field(0.0, description="Beta(alpha, alpha) of mixup; 0 = off.")
    cutmix: float = Field(0.0, description="Beta(alpha, alpha) of CutMix; 0 = off.")
    consistency: float = Field(0.0, ge=0, description=(
        "Weight of the Jensen-Shannon consistency loss between each face and the same face re-framed (scale, shift, "
        "turn, blur); 0 = off."))
    # The defaults are the ranges every run used before they could be chosen, so older cards read true.
    reframe_scale: tuple[float, float] = Field((0.85, 1.18), description=(
        "Range of the re-framed view's box size against the face's crop (> 1: a larger box, a smaller face)."))
    reframe_shift: float = Field(0.06, ge=0, description="Largest shift of the re-framed view, as a share of the side.")
    reframe_rotation: float = Field(8.0, ge=0, description="Largest turn of the re-framed view, in degrees.")
    ema_decay: float = Field(0.0, description="Decay of the weight EMA that is evaluated and exported; 0 = off.")
    weights: str
    seed: int
    device: str
    world_size: int = 1
    precision: Literal["fp32", "bf16"] = Field("fp32", description="Of the training steps; evaluation is fp32.")
    channels_last: bool = False
    tta: TtaMode = "none"
    machine: str = Field("", description="Where it was trained: processor, cores, accelerator.")
    parent: "ParentWeights | None" = Field(None, description="The shipped weights this run was fine-tuned from.")
    averaged: list["AveragedCheckpoint"] = Field(default_factory=list, description=(
        "Checkpoints of this run whose weights make the exported ones, averaged uniformly where there are several "
        "(`export --checkpoint A --checkpoint B`) and mixed with the parent's by `parent_weight`; empty: one "
        "checkpoint's weights, as they are."))
    parent_weight: float = Field(0.0, ge=0, le=1, description=(
        "Share of the parent's weights (`parent`) in the exported ones: (1 - w) x this run's + w x the parent's, "
        "weight by weight (WiSE-FT, `export --parent-weight w`); 0 = this run's alone."))

    @field_validator("reframe_scale")
    @classmethod
    def _box_sizes(cls, scale: tuple[float, float]) -> tuple[float, float]:
        if not 0 < scale[0] <= scale[1]:
            raise ValueError(f"box sizes {scale}: LOW <= HIGH, both above 0")
        return scale


class AveragedCheckpoint(BaseModel):
    """One of the checkpoints averaged into exported weights."""

    file: str
    epoch: int = Field(description="1-based, as in the run's history.")
    weights: Literal["raw", "ema"] = "raw"
    val_accuracy: float | None = Field(None, description="Of these weights alone, without TTA, in the run.")


class ParentWeights(BaseModel):
    """Shipped weights a run started from, as their card described them when the run began (so that the lineage
    survives the file being replaced in place)."""

    file: str
    sha256: str
    training: TrainingConfig
    training_seconds: float
    split: str | None = None
    accuracy: float | None = Field(None, description="On `split`, with `tta`, as the card measured it.")
    tta: TtaMode | None = None


TrainingConfig.model_rebuild()  # its `parent` and `averaged` refer to classes defined after it


class ClassMetrics(BaseModel):
    precision: float
    recall: float
    f1: float
    support: int


class ConfusedPair(BaseModel):
    true: str
    predicted: str
    count: int
    rate: float = Field(description="Share of the true class predicted as the other.")


class EvaluationMetrics(BaseModel):
    split: str
    samples: int
    accuracy: float
    macro_f1: float
    loss: float | None = None
    tta: TtaMode = "none"
    per_class: dict[str, ClassMetrics]
    most_confused: list[ConfusedPair]


class WeightsSource(BaseModel):
    """Where the exported weights came from when they were not trained in this directory's run."""

    file: str
    sha256: str
    model_card: str | None = None


class QuantizationInfo(BaseModel):
    """The int8 ONNX artifact's calibration and its accuracy against fp32 on the same faces (no TTA)."""

    split: str
    samples: int
    calibration_images: int
    accuracy_fp32: float
    accuracy_int8: float


class ArtifactInfo(BaseModel):
    path: str
    sha256: str
    bytes: int


class Manifest(BaseModel):
    format_version: Literal[2] = 2
    name: str = "fer-resnet18"
    version: str = Field(description="Short content hash of model.pt: changes whenever the weights do.")
    created: str
    architecture: str = Field("resnet18", description="Name in the architecture registry "
                                                      "(service.runtime.architectures.ARCHITECTURES).")
    classes: list[str] = Field(default_factory=lambda: list(CLASSES), min_length=2,
                               description="Class names in output order.")
    input: InputSpec
    preprocessing: Preprocessing
    tta: TtaMode = Field("none", description="Test-time augmentation that evaluate and the service apply.")
    outputs: str = "probabilities, shape N x len(classes), in the order of `classes`"
    training: TrainingConfig
    weights_source: WeightsSource | None = None
    validation: EvaluationMetrics | None = None
    quantization: QuantizationInfo | None = None
    artifacts: dict[str, ArtifactInfo] = Field(description="torchscript, onnx, and the report files, by role.")
    libraries: dict[str, str]
