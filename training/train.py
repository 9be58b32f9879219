"""The training loop: plain functions, the whole data set on the device, augmentation on the device.

Multi-GPU and multi-node runs go through torchrun (DistributedDataParallel); each process keeps the whole
data set and trains on its shard of every epoch's permutation.
"""

import contextlib
import csv
import json
import math
import os
import platform
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from schemas.labels import CLASSES
from schemas.manifest import ParentWeights, TrainingConfig
from service.runtime.backends import cpu_has_fast_bf16
from service.runtime.architectures import FerNet, build_model
from service.runtime.modeldir import Artifact
from training import data as data_module
from training.augment import augment, reframe
from training.calibration import calibrate_model_dir
from training.evaluate import predict_batched
from training.export import export_model
from training.shipped import WeightsError, load_shipped_weights
from training.metrics import confusion_json, confusion_matrix, summarize
from training.plots import plot_confusion, plot_history

CHECKPOINT_FILE = "checkpoint.pt"  # the last epoch, to resume
BEST_FILE = "best.pt"  # the best epoch by validation accuracy, what is exported
IMAGENET_FILE = "resnet18-f37072fd.pth"  # torchvision's file name for ResNet18_Weights.IMAGENET1K_V1


def imagenet_weights_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / IMAGENET_FILE


def is_shipped_weights(weights: str) -> bool:
    """Whether `--weights` names shipped FER weights (NAME.safetensors beside NAME.card.json), which
    `initial_model` loads whole, rather than a backbone for `resolve_weights`."""
    return weights.endswith(".safetensors")


def resolve_weights(weights: str) -> Path | None:
    """`none`, `imagenet` (torch hub cache) or a path to a backbone state dict; fails with what to do."""
    if weights == "none" or is_shipped_weights(weights):
        return None
    path = imagenet_weights_path() if weights == "imagenet" else Path(weights)
    if not path.is_file():
        raise FileNotFoundError(
            f"ImageNet weights not found at {path}. Nothing is downloaded at run time: copy torchvision's "
            f"{IMAGENET_FILE} (ResNet18_Weights.IMAGENET1K_V1) to {imagenet_weights_path()} "
            f"(TORCH_HOME={os.environ.get('TORCH_HOME', '~/.cache/torch')}), pass its path to --weights, "
            "or train from scratch with --weights none."
        )
    return path


class _Logits(nn.Module):
    """DistributedDataParallel calls `forward`; training needs logits of float pixels."""

    def __init__(self, model: FerNet):
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.logits(pixels)


def shipped_record(card: dict) -> ParentWeights:
    """What a run records of shipped weights it starts or learns from: their card's file, hash, training and score."""
    evaluation = card.get("evaluation") or {}
    return ParentWeights(file=card["file"], sha256=card["sha256"], training=TrainingConfig(**card["training"]),
                         training_seconds=sum(row.get("seconds", 0) for row in card.get("history", [])),
                         split=evaluation.get("split"), accuracy=evaluation.get("accuracy"), tta=evaluation.get("tta"))


def load_fer_weights(weights: str, role: str) -> tuple[FerNet, ParentWeights]:
    """Shipped FER weights, verified against their card, that initialise (--weights) or teach (--teacher) a run."""
    model, card = load_shipped_weights(Path(weights))
    if card["classes"] != list(CLASSES):
        raise WeightsError(f"{weights}: a model over {card['classes']}, cannot {role} a run over {list(CLASSES)}")
    return model, shipped_record(card)


def initial_model(config: TrainingConfig) -> tuple[FerNet, ParentWeights | None]:
    """A new network, or one fine-tuned from shipped FER weights, with what their card says of them. The network's
    weights do not depend on the side it sees, so a model trained at 48 can be fine-tuned at a larger side."""
    model = build_model(config.architecture, config.image_size, len(CLASSES), resolve_weights(config.weights))
    if not is_shipped_weights(config.weights):
        return model, None
    shipped, parent = load_fer_weights(config.weights, "initialise")
    if parent.training.architecture != config.architecture:
        raise WeightsError(f"{config.weights}: a {parent.training.architecture}, cannot initialise a "
                           f"{config.architecture} (see --architecture)")
    model.net.load_state_dict(shipped.net.state_dict())
    return model, parent


def teacher_model(config: TrainingConfig) -> tuple[FerNet | None, ParentWeights | None]:
    """The frozen network whose predictions the run distils (any architecture; it sees faces at its own side)."""
    if config.teacher == "none":
        return None, None
    teacher, teacher_record = load_fer_weights(config.teacher, "teach")
    return teacher.eval().requires_grad_(False), teacher_record  # eval: its BatchNorm statistics stay its own


def setup_device(choice: str) -> tuple[torch.device, int, int]:
    """The device and (rank, world size); joins the process group when started by torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if choice == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available (use --device cpu or auto)")
    use_cuda = choice == "cuda" or (choice == "auto" and torch.cuda.is_available())
    if world_size > 1:
        dist.init_process_group("nccl" if use_cuda else "gloo")
    rank = dist.get_rank() if world_size > 1 else 0
    if use_cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick its fastest kernels
        return torch.device("cuda", local_rank), rank, world_size
    return torch.device("cpu"), rank, world_size


def training_precision(choice: str, device: torch.device) -> str:
    """`auto`: bf16 on CUDA and on CPUs with bf16 instructions, fp32 elsewhere."""
    if choice != "auto":
        return choice
    return "bf16" if device.type == "cuda" or cpu_has_fast_bf16() else "fp32"


def autocast(device: torch.device, precision: str):
    """Mixed precision for training steps only; evaluation and export stay fp32."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def mix_batch(pixels: torch.Tensor, labels: torch.Tensor, config: TrainingConfig, generator: torch.Generator):
    """Mixup or CutMix (one of the enabled ones, chosen per batch): mixed pixels, the partner labels and the
    weight of the original labels. Returns (pixels, labels, 1.0) when neither is enabled."""
    choices = [name for name, alpha in (("mixup", config.mixup), ("cutmix", config.cutmix)) if alpha > 0]
    if not choices:
        return pixels, labels, 1.0
    pick = choices[int(torch.randint(len(choices), (1,), generator=generator))]
    alpha = config.mixup if pick == "mixup" else config.cutmix
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    order = torch.randperm(len(labels), generator=generator).to(pixels.device)
    if pick == "mixup":
        return lam * pixels + (1 - lam) * pixels[order], labels[order], lam
    height, width = pixels.shape[-2:]
    cut_h, cut_w = int(height * (1 - lam) ** 0.5), int(width * (1 - lam) ** 0.5)
    top = int(torch.randint(height - cut_h + 1, (1,), generator=generator))
    left = int(torch.randint(width - cut_w + 1, (1,), generator=generator))
    mixed = pixels.clone()
    mixed[..., top:top + cut_h, left:left + cut_w] = pixels[order][..., top:top + cut_h, left:left + cut_w]
    return mixed, labels[order], 1 - cut_h * cut_w / (height * width)


def jensen_shannon(*logits: torch.Tensor) -> torch.Tensor:
    """AugMix's consistency loss (Hendrycks et al. 2020): the mean KL divergence of each view's predicted
    distribution from their mixture, in fp32."""
    probabilities = [F.softmax(view.float(), dim=1) for view in logits]
    mixture = torch.stack(probabilities).mean(0).clamp(1e-7, 1).log()
    return sum(F.kl_div(mixture, view, reduction="batchmean") for view in probabilities) / len(probabilities)


def distillation(logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al.'s distillation loss: the KL divergence of the student's softened prediction from the
    teacher's, in fp32, times the temperature squared so that its gradients keep their size as it changes."""
    teacher = F.softmax(teacher_logits.float() / temperature, dim=1)
    student = F.log_softmax(logits.float() / temperature, dim=1)
    return F.kl_div(student, teacher, reduction="batchmean") * temperature ** 2


def ema_average(decay: float):
    """The EMA update with warm-up: decay min(decay, (1 + n) / (10 + n)) after n updates, so that a short run is
    not averaged mostly with its random initial weights (as TensorFlow's ExponentialMovingAverage does)."""
    def average(averaged: torch.Tensor, current: torch.Tensor, updates: torch.Tensor) -> torch.Tensor:
        rate = min(decay, (1 + float(updates)) / (10 + float(updates)))
        return averaged * rate + current * (1 - rate)

    return average


def train_one_epoch(model: nn.Module, optimizer, scheduler, ema: AveragedModel | None, images: torch.Tensor,
                    labels: torch.Tensor, config: TrainingConfig, epoch: int, rank: int,
                    world_size: int, teacher: FerNet | None) -> tuple[float, float]:
    model.train()
    generator = torch.Generator().manual_seed(config.seed * 1000 + epoch)
    order = torch.randperm(len(labels), generator=generator)
    shard = order[: len(order) - len(order) % world_size][rank::world_size].to(images.device)
    device_generator = torch.Generator(device=images.device).manual_seed(config.seed * 1000 + epoch * 16 + rank)
    batches = shard.split(config.batch_size)
    total_loss = torch.zeros((), device=images.device)
    correct = torch.zeros((), device=images.device)
    progress = tqdm(batches, desc=f"epoch {epoch + 1}/{config.epochs}", unit="batch", disable=rank != 0,
                    leave=False)
    mix_generator = torch.Generator().manual_seed(config.seed * 1000 + epoch * 16 + rank + 1)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    for step, index in enumerate(progress):
        pixels = augment(images[index].unsqueeze(1).float(), device_generator, config.aug_rotation, config.aug_shift,
                         config.aug_scale, config.erasing)
        pixels, partner_labels, lam = mix_batch(pixels, labels[index], config, mix_generator)
        if teacher is not None:  # on the faces as the student sees them, mixed ones included
            with torch.no_grad(), autocast(images.device, config.precision):
                teacher_logits = teacher.logits(pixels.contiguous(memory_format=memory_format))
        if config.consistency > 0:  # the same faces re-framed, in the same batch
            pixels = torch.cat([pixels, reframe(pixels, device_generator, config.reframe_scale,
                                                config.reframe_shift, config.reframe_rotation)])
        with autocast(images.device, config.precision):
            logits = model(pixels.contiguous(memory_format=memory_format))
            if config.consistency > 0:
                logits, reframed_logits = logits.chunk(2)
            loss = lam * F.cross_entropy(logits, labels[index], label_smoothing=config.label_smoothing)
            if lam < 1:
                loss = loss + (1 - lam) * F.cross_entropy(logits, partner_labels, label_smoothing=config.label_smoothing)
            if teacher is not None:
                loss = (1 - config.distill) * loss + config.distill * distillation(
                    logits, teacher_logits, config.distill_temperature)
            if config.consistency > 0:
                loss = loss + config.consistency * jensen_shannon(logits, reframed_logits)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if ema is not None:
            ema.update_parameters(model.module.model if world_size > 1 else model.model)
        total_loss += loss.detach() * len(index)
        correct += (logits.argmax(1) == labels[index]).sum()
        if step % 10 == 0:
            seen = min((step + 1) * config.batch_size, len(shard))
            progress.set_postfix(loss=f"{total_loss.item() / seen:.3f}", acc=f"{correct.item() / seen:.3f}")
    if world_size > 1:
        dist.all_reduce(total_loss)
        dist.all_reduce(correct)
    seen = len(shard) * world_size
    return total_loss.item() / seen, correct.item() / seen


@torch.no_grad()
def evaluate(model: FerNet, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 512,
             tta: str = "none") -> tuple[float, torch.Tensor]:
    """(mean loss, confusion matrix) in fp32, with the service's test-time augmentation."""
    model.eval()

    def predict(batch):
        return torch.softmax(model.logits(torch.from_numpy(batch).to(images.device).float()), 1).cpu().numpy()

    probs = torch.from_numpy(predict_batched(predict, images.unsqueeze(1).cpu().numpy(), tta, batch_size))
    probs = probs.to(labels.device)
    loss = F.nll_loss(probs.clamp(min=1e-12).log(), labels).item()
    return loss, confusion_matrix(labels, probs.argmax(1))


def holdout_split(train: data_module.FaceData, fraction: float, seed: int):
    """A deterministic validation split carved out of `train`, for sources that have none."""
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    cut = max(1, int(len(order) * fraction))
    pick = lambda index, split: data_module.FaceData(train.images[index], train.labels[index], train.source, split)  # noqa: E731
    return pick(order[cut:], "train"), pick(order[:cut], "val")


def load_data(config: TrainingConfig):
    train = data_module.load_split(config.data, "train", config.input_size)
    if data_module.has_split(config.data, "val"):
        return train, data_module.load_split(config.data, "val", config.input_size)
    print(f"{config.data} has no validation split: holding out {config.val_fraction:.0%} of train")
    return holdout_split(train, config.val_fraction, config.seed)


def save_atomically(state: dict, path: Path) -> None:
    """A run killed while saving keeps its previous checkpoint intact."""
    partial = path.with_suffix(".partial")
    torch.save(state, partial)
    partial.replace(path)


def write_history(history: list[dict], out: Path) -> None:
    (out / Artifact.HISTORY.file).write_text(json.dumps(history, indent=2))
    with (out / Artifact.HISTORY_CSV.file).open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
    plot_history(history, out / Artifact.HISTORY_PLOT.file)


def describe_machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
             if line.startswith("model name")] if cpuinfo.exists() else []
    return f"{names[0] if names else platform.machine()}, {os.cpu_count()} CPUs"


# Settings that may differ when a run is resumed: where it runs, not what it computes.
RESUMABLE_CHANGES = {"device", "world_size", "precision", "channels_last", "tta", "machine"}


def check_resume(state: dict, config: TrainingConfig, path: Path) -> None:
    # settings added since take their defaults; the input size was recorded beside the config before it was in it
    saved = TrainingConfig(**{"input_size": state["input_size"], **state["config"]}).model_dump()
    differences = [f"--{name.replace('_', '-')} {saved.get(name)!r} in the checkpoint, {value!r} now"
                   for name, value in config.model_dump().items()
                   if name not in RESUMABLE_CHANGES | {"parent", "teacher_weights"} and saved.get(name) != value]
    for option, field in (("weights", "parent"), ("teacher", "teacher_weights")):
        name, recorded = getattr(config, option), getattr(config, field)
        then, now = (saved[field] or {}).get("sha256"), recorded.sha256 if recorded else None
        if then != now and saved[option] == name:  # the same name, other weights
            differences.append(f"--{option} {name}: sha256 {then} in the checkpoint, {now} now")
    if differences:
        raise SystemExit(f"--resume: {path} was trained with other settings: {'; '.join(differences)}. "
                         "Resume with the checkpoint's settings, or start a new run directory.")


def check_data_size(train_data: data_module.FaceData, val_data: data_module.FaceData,
                    config: TrainingConfig, world_size: int) -> None:
    per_process = len(train_data) // world_size
    if per_process < config.batch_size:
        raise data_module.DataError(
            f"{config.data}: {len(train_data)} training image(s) is fewer than one batch of {config.batch_size}"
            f"{f' per process ({world_size} processes)' if world_size > 1 else ''}; "
            "use more data or a smaller --batch-size")
    if len(val_data) == 0:
        raise data_module.DataError(f"{config.data}: the validation split is empty")


def build_optimizer(model: nn.Module, config: TrainingConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=0.9, nesterov=True,
                               weight_decay=config.weight_decay)
    return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainingConfig, steps_per_epoch: int):
    """Stepped once per batch: one-cycle, or linear warm-up then cosine decay to 0 (SGDR without restarts)."""
    if config.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, epochs=config.epochs,
                                                   steps_per_epoch=steps_per_epoch, pct_start=0.15)
    warmup, total = round(config.warmup_epochs * steps_per_epoch), config.epochs * steps_per_epoch

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def resolve_config(config: TrainingConfig, device: torch.device, world_size: int, parent: ParentWeights | None,
                   teacher: ParentWeights | None) -> TrainingConfig:
    """The config as it runs here: `auto` choices resolved, and where it runs recorded."""
    precision = training_precision(config.precision, device)
    return config.model_copy(update={
        "device": device.type, "precision": precision, "channels_last": precision == "bf16" or device.type == "cuda",
        "world_size": world_size, "machine": describe_machine(device), "parent": parent,
        "teacher_weights": teacher})


def train(config: TrainingConfig, out: Path, resume: bool = False) -> None:
    """Train `config` into the run directory `out` (continuing its checkpoint with `resume`), then evaluate the
    best epoch and export it there."""
    device, rank, world_size = setup_device(config.device)
    torch.manual_seed(config.seed)
    out = Path(out)
    model, parent = initial_model(config)  # before the data: a wrong --weights or --teacher stops at once
    teacher, teacher_record = teacher_model(config)
    config = resolve_config(config, device, world_size, parent, teacher_record)

    train_data, val_data = load_data(config)
    check_data_size(train_data, val_data, config, world_size)
    out.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        print(f"data {config.data}: {len(train_data)} train, {len(val_data)} val images; device {device}"
              f"{f' x {world_size} processes' if world_size > 1 else ''}; precision {config.precision}"
              f"{' + channels_last' if config.channels_last else ''}"
              f"{'' if device.type == 'cuda' or config.precision == 'bf16' else ' (this CPU has no bf16 instructions)'}"
              f"; run directory {out.resolve()}")
    train_images, train_labels = train_data.images.to(device), train_data.labels.to(device)
    val_images, val_labels = val_data.images.to(device), val_data.labels.to(device)

    memory_format = torch.channels_last if config.channels_last else torch.preserve_format
    model = model.to(device, memory_format=memory_format)
    if teacher is not None:
        teacher = teacher.to(device, memory_format=memory_format)
    # Weight EMA (BatchNorm statistics too), evaluated every epoch beside the raw weights.
    ema = (AveragedModel(model, avg_fn=ema_average(config.ema_decay), use_buffers=True)
           if config.ema_decay > 0 else None)
    trainer = _Logits(model)
    if world_size > 1:
        trainer = DistributedDataParallel(trainer, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config, -(-(len(train_labels) // world_size) // config.batch_size))
    history: list[dict] = []
    best_accuracy, start_epoch = -1.0, 0
    if resume and (out / CHECKPOINT_FILE).exists():
        state = torch.load(out / CHECKPOINT_FILE, map_location=device, weights_only=True)
        check_resume(state, config, out / CHECKPOINT_FILE)
        model.load_state_dict(state["raw_model"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history, best_accuracy, start_epoch = state["history"], state["best_accuracy"], state["epoch"] + 1
        if rank == 0:
            print(f"resumed from {out / CHECKPOINT_FILE} after epoch {start_epoch}")

    started = time.perf_counter()
    for epoch in range(start_epoch, config.epochs):
        epoch_start = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        train_loss, train_accuracy = train_one_epoch(trainer, optimizer, scheduler, ema, train_images,
                                                     train_labels, config, epoch, rank, world_size, teacher)
        val_loss, val_confusion = evaluate(model, val_images, val_labels)
        row = {"epoch": epoch + 1, "train_loss": round(train_loss, 5), "train_accuracy": round(train_accuracy, 5),
               "val_loss": round(val_loss, 5), "val_accuracy": round(accuracy(val_confusion), 5), "lr": lr}
        # Of the raw and the averaged weights, the epoch's candidate is the one that does better on validation.
        candidate, candidate_accuracy, weights = model, row["val_accuracy"], "raw"
        if ema is not None:
            ema_loss, ema_confusion = evaluate(ema.module, val_images, val_labels)
            row |= {"ema_val_loss": round(ema_loss, 5), "ema_val_accuracy": round(accuracy(ema_confusion), 5)}
            if row["ema_val_accuracy"] > candidate_accuracy:
                candidate, candidate_accuracy, weights = ema.module, row["ema_val_accuracy"], "ema"
        if device.type == "cuda":
            torch.cuda.synchronize()
        row["seconds"] = round(time.perf_counter() - epoch_start, 2)
        history.append(row)
        if rank != 0:
            continue
        averaged = f" (EMA {row['ema_val_accuracy']:.4f})" if ema is not None else ""
        print(f"epoch {epoch + 1}/{config.epochs}: train loss {train_loss:.4f} acc {train_accuracy:.4f} | "
              f"val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.4f}{averaged} | {row['seconds']:.1f}s",
              flush=True)
        state = {"model": candidate.state_dict(), "config": config.model_dump(), "input_size": config.input_size,
                 "architecture": config.architecture, "classes": list(CLASSES), "epoch": epoch, "weights": weights,
                 "val_accuracy": candidate_accuracy}
        if candidate_accuracy > best_accuracy:
            best_accuracy = candidate_accuracy
            save_atomically(state, out / BEST_FILE)
        save_atomically({**state, "raw_model": model.state_dict(), "ema": ema.state_dict() if ema else None,
                         "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                         "history": history, "best_accuracy": best_accuracy}, out / CHECKPOINT_FILE)
        write_history(history, out)

    if rank == 0:
        print(f"trained in {time.perf_counter() - started:.1f}s; best validation accuracy {best_accuracy:.4f}")
        finish(out, val_data, device, config.tta)
    if world_size > 1:
        dist.destroy_process_group()


def accuracy(confusion: torch.Tensor) -> float:
    return float(confusion.diag().sum() / confusion.sum())


def finish(out: Path, val_data: data_module.FaceData, device: torch.device, tta: str) -> None:
    """Evaluate the best checkpoint, write the report files, export and verify the artifacts."""
    best = torch.load(out / BEST_FILE, map_location=device, weights_only=True)
    config = TrainingConfig(**best["config"])
    model = build_model(best["architecture"], config.image_size, len(best["classes"])).to(device)
    model.load_state_dict(best["model"])
    loss, confusion = evaluate(model, val_data.images.to(device), val_data.labels.to(device), tta=tta)
    metrics = summarize(confusion, split=val_data.split, loss=loss, tta=tta)
    (out / Artifact.METRICS.file).write_text(metrics.model_dump_json(indent=2))
    confusion_data = confusion_json(confusion)
    (out / Artifact.CONFUSION_MATRIX.file).write_text(json.dumps(confusion_data, indent=2))
    plot_confusion(confusion_data, out / Artifact.CONFUSION_PLOT.file, title=f"{val_data.split} ({len(val_data)} images)")
    export_model(model, out, config, best["input_size"], val_data.images[:64], metrics, best["classes"], tta)
    calibration = next(fitted for fitted in calibrate_model_dir(out, val_data.images.numpy(), val_data.labels.numpy(),
                                                                val_data.split) if fitted.tta == tta)
    print(f"validation accuracy {metrics.accuracy:.4f} (macro F1 {metrics.macro_f1:.4f}, tta={tta}); calibrated "
          f"with temperature {calibration.temperature:.3f}: ECE {calibration.ece_before:.4f} -> "
          f"{calibration.ece_after:.4f}; exported to {out}")
