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


def reframe(pixels: torch.Tensor, generator: torch.Generator | None, scale_range: tuple[float, float],
            max_shift: float, max_rotation: float, max_blur: float = 1.0) -> torch.Tensor:
    """The same faces as a face detector and a photograph's resampling hand them over: framed larger or smaller
    by a factor drawn from `scale_range` (MTCNN's box size scatters by 0.165 in log against FER2013's crop),
    shifted by up to `max_shift` of the side, turned by up to `max_rotation` degrees (what alignment leaves),
    and blurred by a Gaussian of sigma up to `max_blur` pixels.

    `pixels` is float N x 1 x H x W in 0-255; the result has the same shape.
    """
    n, device = pixels.shape[0], pixels.device

    def uniform(low: float, high: float) -> torch.Tensor:
        return torch.rand(n, device=device, generator=generator) * (high - low) + low

    angle = uniform(-max_rotation, max_rotation) * math.pi / 180
    zoom = uniform(*scale_range)  # > 1: a larger box, so the face looks smaller
    cos, sin = torch.cos(angle) * zoom, torch.sin(angle) * zoom
    theta = torch.stack([
        torch.stack([cos, -sin, uniform(-max_shift, max_shift) * 2], dim=1),
        torch.stack([sin, cos, uniform(-max_shift, max_shift) * 2], dim=1),
    ], dim=1)
    grid = F.affine_grid(theta, list(pixels.shape), align_corners=False)
    moved = F.grid_sample(pixels, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return gaussian_blur(moved, uniform(0.0, max_blur))


def gaussian_blur(pixels: torch.Tensor, sigma: torch.Tensor, radius: int = 3) -> torch.Tensor:
    """Each image blurred by its own Gaussian (`sigma` N, in pixels; 0 leaves it as it is), edges replicated."""
    n, channels, height, width = pixels.shape
    offsets = torch.arange(-radius, radius + 1, device=pixels.device, dtype=pixels.dtype)
    weights = torch.exp(-offsets ** 2 / (2 * sigma.clamp(min=1e-3).view(-1, 1) ** 2))
    weights = (weights / weights.sum(1, keepdim=True)).repeat_interleave(channels, 0)  # N*C x taps
    padded = F.pad(pixels.reshape(1, n * channels, height, width), (radius,) * 4, mode="replicate")
    rows = F.conv2d(padded, weights.view(-1, 1, 2 * radius + 1, 1), groups=n * channels)
    both = F.conv2d(rows, weights.view(-1, 1, 1, 2 * radius + 1), groups=n * channels)
    return both.view(n, channels, height, width)


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
