"""Does a saliency map say anything about the model? Two measurements for every method in the registry:

- Deletion and insertion (Petsiuk et al. 2018, RISE): remove the most salient pixels first (replaced by a
  blurred copy of the image) and follow the target class's probability; the area under that curve is low for a
  faithful map. Insertion starts from the blurred image and puts the most salient pixels back: a high area is
  good. A random map is the baseline each method must beat.
- Model randomisation (Adebayo et al. 2018, "Sanity checks for saliency maps"): re-initialise the network's
  layers from the top down, cumulatively, and compare the maps with the trained network's by Spearman rank
  correlation and SSIM. A method whose maps stay nearly the same for a random network explains the image, not
  the model: it fails the check.
"""

import time

import torch
import torch.nn.functional as F
from torch import nn

from service.runtime.architectures import FerNet, build_model
from service.runtime.explain import METHODS, Explainer

DELETION_STEPS = 16
# A method fails the randomisation check when its maps for the fully randomised network still correlate this
# much with the trained network's (mean Spearman rank correlation).
SANITY_MAX_SPEARMAN = 0.5


def blurred(pixels: torch.Tensor, passes: int = 4) -> torch.Tensor:
    """A strongly blurred copy (repeated 5x5 box blur): what a deleted pixel becomes."""
    for _ in range(passes):
        pixels = F.avg_pool2d(F.pad(pixels, (2, 2, 2, 2), mode="replicate"), 5, stride=1)
    return pixels


def _resized(maps: torch.Tensor, height: int, width: int) -> torch.Tensor:
    return F.interpolate(maps[:, None], size=(height, width), mode="bilinear", align_corners=False)[:, 0]


@torch.no_grad()
def deletion_insertion(model: FerNet, images: torch.Tensor, maps: torch.Tensor, targets: torch.Tensor,
                       steps: int = DELETION_STEPS) -> tuple[torch.Tensor, torch.Tensor]:
    """(deletion AUC, insertion AUC) per image: the mean target probability over `steps` + 1 points as the
    most salient pixels are removed (inserted) in equal shares, trapezoidal rule over [0, 1]."""
    pixels = images.float()
    n, _, height, width = pixels.shape
    background = blurred(pixels)
    order = _resized(maps.float(), height, width).flatten(1).argsort(1, descending=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(height * width).expand(n, -1))
    rank = rank.view(n, 1, height, width)
    deletion, insertion = [], []
    for step in range(steps + 1):
        salient = rank < round(step / steps * height * width)
        deleted = torch.where(salient, background, pixels)
        inserted = torch.where(salient, pixels, background)
        probabilities = model(torch.cat([deleted, inserted]))
        scores = probabilities.gather(1, targets.repeat(2)[:, None])[:, 0]
        deletion.append(scores[:n])
        insertion.append(scores[n:])
    return _trapezoid(torch.stack(deletion, 1)), _trapezoid(torch.stack(insertion, 1))


def _trapezoid(curve: torch.Tensor) -> torch.Tensor:
    return ((curve[:, 1:] + curve[:, :-1]) / 2).mean(1)


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation per row of two N x M tensors (ties broken by position)."""
    rank = lambda x: x.argsort(1).argsort(1).double()  # noqa: E731
    ra, rb = rank(a), rank(b)
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    return (ra * rb).sum(1) / (ra.norm(dim=1) * rb.norm(dim=1)).clamp(min=1e-12)


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 7) -> torch.Tensor:
    """Structural similarity per pair of N x H x W maps in [0, 1] (Wang et al. 2004, uniform window)."""
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    x, y = a[:, None].double(), b[:, None].double()
    mean = lambda t: F.avg_pool2d(t, window, stride=1)  # noqa: E731
    mx, my = mean(x), mean(y)
    vx, vy, cov = mean(x * x) - mx ** 2, mean(y * y) - my ** 2, mean(x * y) - mx * my
    value = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    return value.flatten(1).mean(1)


def randomisation_order(model: FerNet) -> list[str]:
    """Modules with parameters from the output back to the input, blocks of a stage one by one
    (for ResNet18: fc.1, layer4.1, layer4.0, ..., layer1.0, bn1, conv1)."""
    stages = []
    for name, module in reversed(list(model.net.named_children())):
        parts = list(module.named_children()) if isinstance(module, nn.Sequential) else [("", module)]
        for child, part in reversed(parts):
            if any(True for _ in part.parameters()):
                stages.append(f"{name}.{child}" if child else name)
    return stages


def _reinitialise(module: nn.Module, generator: torch.Generator) -> None:
    for child in module.modules():
        if isinstance(child, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(child.weight, generator=generator)
            if child.bias is not None:
                nn.init.zeros_(child.bias)
        elif isinstance(child, nn.BatchNorm2d):
            nn.init.ones_(child.weight)
            nn.init.zeros_(child.bias)


def sanity_check(explainer: Explainer, images: torch.Tensor, method: str, seed: int = 0) -> list[dict]:
    """Cascading randomisation: per stage, the mean Spearman and SSIM between the trained network's maps and
    those of a copy whose layers from the top down to that stage are re-initialised."""
    original, targets, _ = explainer.saliency(images, method)
    model = explainer.model
    randomised = build_model(model.architecture, model.image_size, model.num_classes).to(explainer.device)
    randomised.load_state_dict(model.state_dict())
    randomised.requires_grad_(False).eval()
    other = Explainer(randomised, randomised.architecture, explainer.device)  # one: its hook stays on the model
    other.default_layer = explainer.default_layer
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for stage in randomisation_order(randomised):
        _reinitialise(randomised.net.get_submodule(stage), generator)  # in place, under the same explainer
        maps, _, _ = other.saliency(images, method, None)
        rows.append({"randomised_to": stage,
                     "spearman": round(float(spearman(original.flatten(1), maps.flatten(1)).mean()), 4),
                     "ssim": round(float(ssim(original, maps).mean()), 4)})
    return rows


def faithfulness_table(explainer: Explainer, images: torch.Tensor, methods: list[str] | None = None,
                       seed: int = 0) -> list[dict]:
    """One row per method: deletion/insertion AUC (and the random-map baseline's), the randomisation check's
    last stage, whether the method passes it, and the seconds it took."""
    model = explainer.model
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        targets = model(images.float()).argmax(1)
    size = model.image_size
    random_maps = torch.rand((len(images), size, size), generator=generator)
    random_deletion, random_insertion = deletion_insertion(model, images, random_maps, targets)
    rows = []
    for method in methods or list(METHODS):
        started = time.perf_counter()
        maps, _, _ = explainer.saliency(images, method)
        deletion, insertion = deletion_insertion(model, images, maps, targets)
        cascade = sanity_check(explainer, images, method, seed)
        rows.append({"method": method, "images": len(images),
                     "deletion_auc": round(float(deletion.mean()), 4),
                     "insertion_auc": round(float(insertion.mean()), 4),
                     "random_deletion_auc": round(float(random_deletion.mean()), 4),
                     "random_insertion_auc": round(float(random_insertion.mean()), 4),
                     "randomised_spearman": cascade[-1]["spearman"], "randomised_ssim": cascade[-1]["ssim"],
                     "passes_sanity_check": cascade[-1]["spearman"] < SANITY_MAX_SPEARMAN,
                     "cascade": cascade, "seconds": round(time.perf_counter() - started, 2)})
    return rows
