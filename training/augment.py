"""Batched data augmentation on the device the batch lives on (no CPU data loader in the hot path)."""

import math

import torch
import torch.nn.functional as F


def augment(pixels: torch.Tensor, generator: torch.Generator | None = None, max_rotation: float = 10.0,
            max_shift: float = 0.1, scale_range: tuple[float, float] = (0.9, 1.1),
            erase_probability: float = 0.5) -> torch.Tensor:
    """Random shift (a crop with padding), scale, small rotation, horizontal flip and random erasing.

    `pixels` is float N x 1 x H x W in 0-255; the result has the same shape.
    """
    n, device = pixels.shape[0], pixels.device

    def uniform(low: float, high: float) -> torch.Tensor:
        return torch.rand(n, device=device, generator=generator) * (high - low) + low

    angle = uniform(-max_rotation, max_rotation) * math.pi / 180
    scale = uniform(*scale_range)
    flip = torch.where(torch.rand(n, device=device, generator=generator) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([
        torch.stack([cos * flip, -sin, uniform(-max_shift, max_shift) * 2], dim=1),
        torch.stack([sin * flip, cos, uniform(-max_shift, max_shift) * 2], dim=1),
    ], dim=1)
    grid = F.affine_grid(theta, list(pixels.shape), align_corners=False)
    out = F.grid_sample(pixels, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return random_erasing(out, erase_probability, generator)


def random_erasing(pixels: torch.Tensor, probability: float, generator: torch.Generator | None = None,
                   area_range: tuple[float, float] = (0.02, 0.15)) -> torch.Tensor:
    """Erase one random rectangle (random grey level) per image, with the given probability."""
    n, _, height, width = pixels.shape
    device = pixels.device
    rand = lambda: torch.rand(n, device=device, generator=generator)  # noqa: E731
    area = (rand() * (area_range[1] - area_range[0]) + area_range[0]) * height * width
    aspect = torch.exp((rand() - 0.5) * 2 * math.log(3.0))
    box_h = (area * aspect).sqrt().clamp(max=height)
    box_w = (area / aspect).sqrt().clamp(max=width)
    top = rand() * (height - box_h)
    left = rand() * (width - box_w)
    rows = torch.arange(height, device=device).view(1, height, 1)
    cols = torch.arange(width, device=device).view(1, 1, width)
    inside = ((rows >= top.view(-1, 1, 1)) & (rows < (top + box_h).view(-1, 1, 1))
              & (cols >= left.view(-1, 1, 1)) & (cols < (left + box_w).view(-1, 1, 1)))
    erase = inside & (rand() < probability).view(-1, 1, 1)
    fill = (rand() * 255).view(-1, 1, 1)
    return torch.where(erase.unsqueeze(1), fill.view(-1, 1, 1, 1), pixels)
