"""The training loop: plain functions, the whole data set on the device, augmentation on the device.

Multi-GPU and multi-node runs go through torchrun (DistributedDataParallel); each process keeps the whole
data set and trains on its shard of every epoch's permutation.
"""

import argparse
import contextlib
import csv
import json
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from schemas.manifest import TrainingConfig
from training import data as data_module
from training.augment import augment
from training.export import export_model
from training.metrics import confusion_json, confusion_matrix, summarize
from training.model import FerNet, build_model
from training.plots import plot_confusion, plot_history

CHECKPOINT_FILE = "checkpoint.pt"  # the last epoch, to resume
BEST_FILE = "best.pt"  # the best epoch by validation accuracy, what is exported


class _Logits(nn.Module):
    """DistributedDataParallel calls `forward`; training needs logits of float pixels."""

    def __init__(self, model: FerNet):
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.logits(pixels)


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


def autocast(device: torch.device):
    """bfloat16 mixed precision on CUDA; full precision on the CPU, where it is faster."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_one_epoch(model: nn.Module, optimizer, scheduler, images: torch.Tensor, labels: torch.Tensor,
                    args: argparse.Namespace, epoch: int, rank: int, world_size: int) -> tuple[float, float]:
    model.train()
    generator = torch.Generator().manual_seed(args.seed * 1000 + epoch)
    order = torch.randperm(len(labels), generator=generator)
    shard = order[: len(order) - len(order) % world_size][rank::world_size].to(images.device)
    device_generator = torch.Generator(device=images.device).manual_seed(args.seed * 1000 + epoch * 16 + rank)
    batches = shard.split(args.batch_size)
    total_loss = torch.zeros((), device=images.device)
    correct = torch.zeros((), device=images.device)
    progress = tqdm(batches, desc=f"epoch {epoch + 1}/{args.epochs}", unit="batch", disable=rank != 0,
                    leave=False)
    for step, index in enumerate(progress):
        pixels = augment(images[index].unsqueeze(1).float(), device_generator)
        with autocast(images.device):
            logits = model(pixels)
            loss = F.cross_entropy(logits, labels[index], label_smoothing=args.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total_loss += loss.detach() * len(index)
        correct += (logits.argmax(1) == labels[index]).sum()
        if step % 10 == 0:
            seen = min((step + 1) * args.batch_size, len(shard))
            progress.set_postfix(loss=f"{total_loss.item() / seen:.3f}", acc=f"{correct.item() / seen:.3f}")
    if world_size > 1:
        dist.all_reduce(total_loss)
        dist.all_reduce(correct)
    seen = len(shard) * world_size
    return total_loss.item() / seen, correct.item() / seen


@torch.no_grad()
def evaluate(model: FerNet, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 512,
             tta: bool = False) -> tuple[float, torch.Tensor, torch.Tensor]:
    """(mean loss, confusion matrix, probabilities); `tta` averages with the horizontally flipped image."""
    model.eval()
    probabilities = []
    for index in torch.arange(len(labels), device=images.device).split(batch_size):
        pixels = images[index].unsqueeze(1).float()
        with autocast(images.device):
            probs = torch.softmax(model.logits(pixels).float(), 1)
            if tta:
                probs = (probs + torch.softmax(model.logits(pixels.flip(-1)).float(), 1)) / 2
        probabilities.append(probs)
    probs = torch.cat(probabilities)
    loss = F.nll_loss(probs.clamp(min=1e-12).log(), labels).item()
    return loss, confusion_matrix(labels, probs.argmax(1)), probs


def holdout_split(train: data_module.FaceData, fraction: float, seed: int):
    """A deterministic validation split carved out of `train`, for sources that have none."""
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    cut = max(1, int(len(order) * fraction))
    pick = lambda index, split: data_module.FaceData(train.images[index], train.labels[index], train.source, split)  # noqa: E731
    return pick(order[cut:], "train"), pick(order[:cut], "val")


def load_data(args: argparse.Namespace):
    train = data_module.load_split(args.data, "train", args.input_size)
    if data_module.has_split(args.data, "val"):
        return train, data_module.load_split(args.data, "val", args.input_size)
    print(f"{args.data} has no validation split: holding out {args.val_fraction:.0%} of train")
    return holdout_split(train, args.val_fraction, args.seed)


def save_atomically(state: dict, path: Path) -> None:
    """A run killed while saving keeps its previous checkpoint intact."""
    partial = path.with_suffix(".partial")
    torch.save(state, partial)
    partial.replace(path)


def write_history(history: list[dict], out: Path) -> None:
    (out / "history.json").write_text(json.dumps(history, indent=2))
    with (out / "history.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
    plot_history(history, out / "history.png")


def training_config(args: argparse.Namespace, device: torch.device, world_size: int) -> TrainingConfig:
    return TrainingConfig(data=args.data, epochs=args.epochs, image_size=args.image_size,
                          batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                          label_smoothing=args.label_smoothing, weights=args.weights, seed=args.seed,
                          device=device.type, world_size=world_size, amp=device.type == "cuda")


def train(args: argparse.Namespace) -> None:
    device, rank, world_size = setup_device(args.device)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    train_data, val_data = load_data(args)
    if rank == 0:
        print(f"data {args.data}: {len(train_data)} train, {len(val_data)} val images; device {device}"
              f"{f' x {world_size} processes' if world_size > 1 else ''}")
    train_images, train_labels = train_data.images.to(device), train_data.labels.to(device)
    val_images, val_labels = val_data.images.to(device), val_data.labels.to(device)

    model = build_model(args.image_size, args.weights).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    trainer = _Logits(model)
    if world_size > 1:
        trainer = DistributedDataParallel(trainer, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = -(-(len(train_labels) // world_size) // args.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, epochs=args.epochs,
                                                    steps_per_epoch=steps_per_epoch, pct_start=0.15)
    history: list[dict] = []
    best_accuracy, start_epoch = -1.0, 0
    if args.resume and (out / CHECKPOINT_FILE).exists():
        state = torch.load(out / CHECKPOINT_FILE, map_location=device, weights_only=False)
        if state["config"]["epochs"] != args.epochs:
            raise SystemExit(f"--resume: {out / CHECKPOINT_FILE} follows a {state['config']['epochs']}-epoch "
                             f"schedule; resume with --epochs {state['config']['epochs']}")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history, best_accuracy, start_epoch = state["history"], state["best_accuracy"], state["epoch"] + 1
        if rank == 0:
            print(f"resumed from {out / CHECKPOINT_FILE} after epoch {start_epoch}")

    config = training_config(args, device, world_size)
    started = time.perf_counter()
    for epoch in range(start_epoch, args.epochs):
        epoch_start = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        train_loss, train_accuracy = train_one_epoch(trainer, optimizer, scheduler, train_images, train_labels,
                                                     args, epoch, rank, world_size)
        val_loss, val_confusion, _ = evaluate(model, val_images, val_labels)
        val_accuracy = float(val_confusion.diag().sum() / val_confusion.sum())
        if device.type == "cuda":
            torch.cuda.synchronize()
        history.append({"epoch": epoch + 1, "train_loss": round(train_loss, 5), "train_accuracy": round(train_accuracy, 5),
                        "val_loss": round(val_loss, 5), "val_accuracy": round(val_accuracy, 5), "lr": lr,
                        "seconds": round(time.perf_counter() - epoch_start, 2)})
        if rank != 0:
            continue
        print(f"epoch {epoch + 1}/{args.epochs}: train loss {train_loss:.4f} acc {train_accuracy:.4f} | "
              f"val loss {val_loss:.4f} acc {val_accuracy:.4f} | {history[-1]['seconds']:.1f}s")
        state = {"model": model.state_dict(), "config": config.model_dump(), "input_size": args.input_size,
                 "epoch": epoch, "val_accuracy": val_accuracy}
        if val_accuracy > best_accuracy:
            best_accuracy = val_accuracy
            save_atomically(state, out / BEST_FILE)
        save_atomically({**state, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                         "history": history, "best_accuracy": best_accuracy}, out / CHECKPOINT_FILE)
        write_history(history, out)

    if rank == 0:
        print(f"trained in {time.perf_counter() - started:.1f}s; best validation accuracy {best_accuracy:.4f}")
        finish(out, val_data, device, args.tta)
    if world_size > 1:
        dist.destroy_process_group()


def finish(out: Path, val_data: data_module.FaceData, device: torch.device, tta: bool) -> None:
    """Evaluate the best checkpoint, write the report files, export and verify the artifacts."""
    best = torch.load(out / BEST_FILE, map_location=device, weights_only=False)
    config = TrainingConfig(**best["config"])
    model = build_model(config.image_size).to(device)
    model.load_state_dict(best["model"])
    loss, confusion, _ = evaluate(model, val_data.images.to(device), val_data.labels.to(device), tta=tta)
    metrics = summarize(confusion, split=val_data.split, loss=loss, tta=tta)
    (out / "metrics.json").write_text(metrics.model_dump_json(indent=2))
    confusion_data = confusion_json(confusion)
    (out / "confusion_matrix.json").write_text(json.dumps(confusion_data, indent=2))
    plot_confusion(confusion_data, out / "confusion_matrix.png", title=f"{val_data.split} ({len(val_data)} images)")
    manifest = export_model(model, out, config, best["input_size"], val_data.images[:64], metrics)
    print(f"validation accuracy {metrics.accuracy:.4f} (macro F1 {metrics.macro_f1:.4f}, tta={tta}); "
          f"exported {', '.join(sorted(manifest.artifacts))} to {out}")
