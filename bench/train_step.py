"""Training-step throughput by precision, in one run: `python -m bench.train_step [--batch 128 --size 48]`.

One step is what `python -m training train` does per batch (augmentation, forward, backward, AdamW), on the
CPU or CUDA; each configuration is measured in turn, twice, after warm-up steps, and the ratio to fp32 printed.
"""

import argparse
import json
import time

import torch
import torch.nn.functional as F

from service.runtime.architectures import build_model
from training.augment import augment
from service.runtime.backends import cpu_has_fast_bf16
from training.train import autocast


def steps_per_second(device: torch.device, precision: str, channels_last: bool, batch: int, size: int,
                     steps: int, warmup: int) -> float:
    torch.manual_seed(0)
    model = build_model("resnet18", size).to(device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    images = torch.randint(0, 256, (batch, 1, 48, 48), dtype=torch.uint8, device=device)
    labels = torch.randint(0, 7, (batch,), device=device)
    for step in range(warmup + steps):
        if step == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
        pixels = augment(images.float()).contiguous(memory_format=memory_format)
        with autocast(device, precision):
            loss = F.cross_entropy(model.logits(pixels), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.train_step", description=__doc__)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--size", type=int, default=48, help="side the network sees")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    configurations = [("fp32", False), ("bf16", False), ("bf16", True)]
    results = {f"{precision}{' + channels_last' if last else ''}": [] for precision, last in configurations}
    for _ in range(2):  # interleaved rounds, so a change of load hits every configuration alike
        for (precision, last), name in zip(configurations, results):
            results[name].append(steps_per_second(device, precision, last, args.batch, args.size, args.steps,
                                                  args.warmup))
    best = {name: max(values) for name, values in results.items()}
    for name, value in best.items():
        print(f"{name:>22}: {value:7.1f} img/s per training step ({value / best['fp32']:.2f}x fp32)")
    print(json.dumps({"device": str(device), "cpu_has_fast_bf16": cpu_has_fast_bf16() if device.type == "cpu"
                      else None, "batch": args.batch, "size": args.size, "images_per_s": best}))


if __name__ == "__main__":
    main()
