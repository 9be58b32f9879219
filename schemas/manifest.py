"""`manifest.json`: what a training run exported, enough for the service to load and verify it."""

from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from schemas.labels import CLASSES

MANIFEST_FILE = "manifest.json"
# Test-time augmentation: none, horizontal flip, or the ten-crop (four corners and the centre, and their mirrors).
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


def option(default: Any, description: str, **checks: Any) -> Any:
    """A field of `TrainingConfig` that is also an option of `python -m training train`: the parser is generated
    from these declarations (name, type, default, help and checks: training/options.py), and the model card's
    command lists them."""
    return Field(default, description=description, json_schema_extra={"option": True}, **checks)


def check_range(low_high: tuple[float, float]) -> tuple[float, float]:
    if not 0 < low_high[0] <= low_high[1]:
        raise ValueError("LOW <= HIGH, both above 0")
    return low_high


class TrainingConfig(BaseModel):
    """What a training run computes (every `train` option, in the order the parser and the card list them) and,
    after them, what it recorded of where it ran. Options added after the first runs (schedule, warmup_epochs,
    aug_*, erasing, consistency, reframe_*, teacher, distill*, input_size, val_fraction) default to the values
    earlier runs used, so older cards and checkpoints, which record every other option, read true."""

    data: str = option("synthetic", "synthetic[:N], an image-folder root, fer2013.csv or a label,feature CSV")
    architecture: str = option("resnet18", "network, by its name in the architecture registry")
    epochs: int = option(30, "length of the schedule", ge=1)
    image_size: int = option(48, "side of the image the network sees", ge=8)
    input_size: int = option(48, "side the data is stored at (FER2013: 48)", ge=8)
    batch_size: int = option(128, "images per step", ge=1)
    optimizer: Literal["adamw", "sgd"] = option("adamw", "sgd: Nesterov momentum 0.9")
    schedule: Literal["onecycle", "cosine"] = option("onecycle", (
        "learning rate per step: one-cycle (rising for 15 % of the steps, then annealed), or a linear warm-up of "
        "--warmup-epochs then cosine decay to 0"))
    warmup_epochs: float = option(0.0, "--schedule cosine: epochs of linear warm-up", ge=0)
    lr: float = option(2e-3, "peak learning rate", ge=0)
    weight_decay: float = option(0.05, "decoupled (adamw) or L2 (sgd) weight decay", ge=0)
    label_smoothing: float = option(0.1, "of the cross-entropy's targets", ge=0, lt=1)
    mixup: float = option(0.0, "mixup's Beta alpha (e.g. 0.2); 0 = off", ge=0)
    cutmix: float = option(0.0, "CutMix's Beta alpha (e.g. 1.0); 0 = off", ge=0)
    aug_scale: tuple[float, float] = option((0.9, 1.1), (
        "augmentation: range of the random zoom (> 1: the face drawn larger)"))
    aug_shift: float = option(0.1, "augmentation: largest random shift, as a share of the side", ge=0)
    aug_rotation: float = option(10.0, "augmentation: largest random turn, in degrees", ge=0)
    erasing: float = option(0.5, "augmentation: probability of erasing a random rectangle (random erasing)",
                            ge=0, le=1)
    consistency: float = option(0.0, (
        "weight of a Jensen-Shannon consistency loss between each face and the same face re-framed as a face "
        "detector hands it over (AugMix uses 12); 0 = off. Costs a second forward and backward pass per face"), ge=0)
    reframe_scale: tuple[float, float] = option((0.85, 1.18), (
        "--consistency's re-framed box size against the crop (> 1: a larger box, a smaller face)"))
    reframe_shift: float = option(0.06, "--consistency's largest shift, as a share of the side", ge=0)
    reframe_rotation: float = option(8.0, "--consistency's largest turn, in degrees", ge=0)
    teacher: str = option("none", (
        "shipped FER weights NAME.safetensors whose softened predictions on each augmented batch the network also "
        "learns (knowledge distillation, Hinton et al. 2015; a teacher of the same architecture makes a "
        "born-again network, Furlanello et al. 2018); none = off. Costs one more forward pass per face"))
    distill: float = option(0.5, "--teacher: weight of the distillation loss; the cross-entropy has the rest",
                            gt=0, le=1)
    distill_temperature: float = option(2.0, "--teacher: temperature that softens both predictions", gt=0)
    ema_decay: float = option(0.998, "per-step decay of the weight EMA that is evaluated and exported; 0 = off",
                              ge=0, lt=1)
    precision: Literal["auto", "fp32", "bf16"] = option("auto", (
        "of training steps (evaluation is fp32): auto = bf16 on CUDA and on CPUs with bf16 instructions; recorded "
        "as chosen"))
    weights: str = option("none", (
        "none (from scratch), imagenet (torch hub cache), a ResNet18 state dict path, or shipped FER weights "
        "NAME.safetensors to fine-tune (e.g. at a larger --image-size)"))
    device: Literal["auto", "cpu", "cuda"] = option("auto", "where to train; recorded as chosen")
    seed: int = option(0, "of the initial weights, the data order and the augmentation")
    val_fraction: float = option(0.1, "held out of train when the data has no val split", gt=0, lt=1)
    tta: TtaMode = option("flip", "test-time augmentation recorded in the manifest and applied by evaluate and the "
                                  "service")
    # Recorded, not chosen:
    world_size: int = 1
    channels_last: bool = False
    machine: str = Field("", description="Where it was trained: processor, cores, accelerator.")
    parent: "ParentWeights | None" = Field(None, description="The shipped weights this run was fine-tuned from.")
    teacher_weights: "ParentWeights | None" = Field(None, description="The shipped weights `teacher` named.")
    averaged: list["AveragedCheckpoint"] = Field(default_factory=list, description=(
        "Checkpoints of this run whose weights make the exported ones, averaged uniformly where there are several "
        "(`export --checkpoint A --checkpoint B`), mixed with the parent's by `parent_weight` and given new "
        "batch-norm statistics by `batch_norm_faces`; empty: one checkpoint's weights, as they are."))
    parent_weight: float = Field(0.0, ge=0, le=1, description=(
        "Share of the parent's weights (`parent`) in the exported ones: (1 - w) x this run's + w x the parent's, "
        "weight by weight (WiSE-FT, `export --parent-weight w`); 0 = this run's alone."))
    batch_norm_faces: int = Field(0, ge=0, description=(
        "Clean training faces, seen through the manifest's TTA views, that the exported weights' batch-norm "
        "statistics were recomputed on (`export --bn-faces N`); 0 = the run's own, which for EMA weights average "
        "the augmented batches' statistics over the last steps."))

    _ranges = field_validator("aug_scale", "reframe_scale")(check_range)

    @field_validator("teacher")
    @classmethod
    def _teacher_is_shipped_weights(cls, teacher: str) -> str:
        if teacher != "none" and not teacher.endswith(".safetensors"):
            raise ValueError("shipped FER weights NAME.safetensors (beside their NAME.card.json), or none")
        return teacher

    @model_validator(mode="after")
    def _warm_up_within_the_schedule(self) -> "TrainingConfig":
        if self.warmup_epochs and self.schedule != "cosine":
            raise ValueError("--warmup-epochs applies to --schedule cosine (one-cycle warms up for 15 % of the steps)")
        if self.warmup_epochs >= self.epochs:
            raise ValueError(f"--warmup-epochs {self.warmup_epochs:g} is not shorter than --epochs {self.epochs}")
        return self

    @model_validator(mode="after")
    def _distillation_with_a_teacher(self) -> "TrainingConfig":
        defaults = type(self).model_fields
        changed = [name for name in ("distill", "distill_temperature") if getattr(self, name) != defaults[name].default]
        if self.teacher == "none" and changed:
            raise ValueError(f"--{changed[0].replace('_', '-')} applies to a --teacher (none given)")
        return self


class AveragedCheckpoint(BaseModel):
    """One of the checkpoints averaged into exported weights."""

    file: str
    epoch: int = Field(description="1-based, as in the run's history.")
    weights: Literal["raw", "ema"] = "raw"
    val_accuracy: float | None = Field(None, description="Of these weights alone, without TTA, in the run.")


class ParentWeights(BaseModel):
    """Shipped weights a run started from or learnt from (its teacher), as their card described them when the run
    began (so that the lineage survives the file being replaced in place)."""

    file: str
    sha256: str
    training: TrainingConfig
    training_seconds: float
    split: str | None = None
    accuracy: float | None = Field(None, description="On `split`, with `tta`, as the card measured it.")
    tta: TtaMode | None = None


TrainingConfig.model_rebuild()  # its `parent`, `teacher_weights` and `averaged` refer to classes defined after it


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
    """The int8 ONNX artifact's calibration, its accuracy against fp32 on the same faces with the TTA the service
    applies (`tta`) and without, and whether `FER_PRECISION=auto` serves it on the CPU."""

    split: str
    samples: int
    calibration_images: int
    tta: str = Field("none", description="The TTA of accuracy_fp32 and accuracy_int8: the manifest's, as served.")
    accuracy_fp32: float
    accuracy_int8: float
    accuracy_fp32_without_tta: float | None = None
    accuracy_int8_without_tta: float | None = None
    servable: bool = Field(False, description="int8 is within 0.3 points of fp32 with the served TTA: the default "
                                              "on the CPU. Manifests from before this field say False.")
    int8_sha256: str | None = Field(None, description="The measured int8 model, so that one quantized again from "
                                                      "the same calibration can be recognised as it.")


class ReliabilityBin(BaseModel):
    """Faces whose confidence (top probability) falls in [low, high): how sure the model was and how often right."""

    low: float
    high: float
    count: int
    confidence: float | None = Field(None, description="Mean top probability; None for an empty bin.")
    accuracy: float | None = None


class Calibration(BaseModel):
    """Temperature scaling (Guo et al. 2017): the served probabilities are softmax(log(p) / temperature) of the
    probabilities p the model and its TTA give, one order-preserving map, so no label changes. The temperature is
    the one that minimises the negative log-likelihood on `split`; the expected calibration error (ECE: the
    faces' |accuracy - confidence| per confidence bin, weighted by the bin's share) is measured there too."""

    temperature: float = Field(gt=0)
    split: str = Field(description="The faces it was fitted and measured on (FER2013 PublicTest for the shipped "
                                   "model: it has no other held-out faces).")
    samples: int
    tta: TtaMode
    bins: int = 15
    ece_before: float
    ece_after: float
    nll_before: float
    nll_after: float
    reliability_before: list[ReliabilityBin]
    reliability_after: list[ReliabilityBin]


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
    calibrations: list[Calibration] = Field(default_factory=list, description=(
        "One temperature per TTA it was fitted with (export fits one for each TTA the service can be set to "
        "serve); a TTA without one is served as the model gives it (as in directories exported before "
        "calibration)."))
    artifacts: dict[str, ArtifactInfo] = Field(description="torchscript, onnx, and the report files, by role.")
    libraries: dict[str, str]

    @model_validator(mode="before")
    @classmethod
    def _one_calibration_read_as_a_list(cls, data: Any) -> Any:
        """Manifests written before 2026-12-06 held one calibration, of their own TTA, as `calibration`."""
        if isinstance(data, dict) and "calibration" in data:
            data = dict(data)
            one = data.pop("calibration")
            data.setdefault("calibrations", [one] if one else [])
        return data

    @field_validator("calibrations")
    @classmethod
    def _one_temperature_per_tta(cls, calibrations: list[Calibration]) -> list[Calibration]:
        ttas = [calibration.tta for calibration in calibrations]
        if len(set(ttas)) != len(ttas):
            raise ValueError(f"more than one calibration for one TTA: {ttas}")
        return calibrations

    def calibration_for(self, tta: str) -> Calibration | None:
        return next((calibration for calibration in self.calibrations if calibration.tta == tta), None)

    @property
    def calibration(self) -> Calibration | None:
        """The calibration of the manifest's own TTA: of what evaluate and the service apply by default."""
        return self.calibration_for(self.tta)

    def temperature(self, tta: str) -> float:
        """What probabilities under `tta` are calibrated with: the temperature fitted with that TTA, 1 (as the model
        gives them) where none was."""
        calibration = self.calibration_for(tta)
        return calibration.temperature if calibration else 1.0
