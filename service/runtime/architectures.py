"""Networks by name, as torchvision's `get_model`: a second architecture is one entry in `ARCHITECTURES`.

Every network is wrapped in `FerNet` with its preprocessing, so that the exported artifacts take raw grey uint8
images (N x 1 x H x W, 0-255) and return probabilities, and explanations can take gradients from float pixels.
"""

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

# The grey image is replicated to 3 channels, so the ImageNet statistics keep pretrained weights meaningful.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def resnet18(num_classes: int, backbone_weights: Path | None = None) -> nn.Module:
    """The report's network: torchvision ResNet18 whose last layer is Dropout(0.5) + Linear(512, classes)."""
    net = torchvision.models.resnet18(weights=None)
    if backbone_weights is not None:
        net.load_state_dict(torch.load(backbone_weights, map_location="cpu", weights_only=True))
    net.fc = nn.Sequential(nn.Dropout(0.5), nn.Linear(net.fc.in_features, num_classes))
    return net


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {"resnet18": resnet18}
# Where Grad-CAM looks by default: the last convolutional stage of each architecture.
GRADCAM_LAYERS = {"resnet18": "layer4"}


class FerNet(nn.Module):
    """A network with its preprocessing. `forward` takes uint8 and returns probabilities (what is exported);
    `logits` takes float pixels so that gradients can reach the input."""

    def __init__(self, net: nn.Module, architecture: str, image_size: int, num_classes: int):
        super().__init__()
        self.net = net
        self.architecture = architecture
        self.image_size = image_size
        self.num_classes = num_classes
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1))

    def preprocess(self, pixels: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(pixels / 255.0, size=[self.image_size, self.image_size], mode="bilinear",
                          align_corners=False)
        return (x.expand(-1, 3, -1, -1) - self.mean) / self.std

    @torch.jit.export
    def logits(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net(self.preprocess(pixels))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(images.float()), dim=1)


def build_model(architecture: str = "resnet18", image_size: int = 48, num_classes: int = 7,
                backbone_weights: Path | None = None) -> FerNet:
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}: expected one of {', '.join(ARCHITECTURES)}")
    return FerNet(ARCHITECTURES[architecture](num_classes, backbone_weights), architecture, image_size, num_classes)


def conv_layers(model: FerNet) -> dict[str, nn.Conv2d]:
    """The network's convolutions by their own module names (conv1, layer1.0.conv1, ...)."""
    return {name: module for name, module in model.net.named_modules() if isinstance(module, nn.Conv2d)}


def module_outputs(model: FerNet, input_size: int) -> list[tuple[str, nn.Module, torch.Size]]:
    """Each module of the network (containers too) with the shape of its output, as each call finishes, for one
    blank face of `input_size` in eval mode: the forward pass that the layer tables below are read from."""
    calls: list[tuple[str, nn.Module, torch.Size]] = []

    def record(name: str):
        def hook(module, inputs, output):
            if isinstance(output, torch.Tensor):
                calls.append((name, module, output.shape))
        return hook

    hooks = [module.register_forward_hook(record(name)) for name, module in model.net.named_modules() if name]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 1, input_size, input_size, dtype=torch.uint8, device=model.mean.device))
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return calls


def spatial_layers(model: FerNet) -> list[str]:
    """The modules whose output is a map (N x C x H x W), in the order they first finish: the layers Grad-CAM can
    weigh (the classifier head's outputs are vectors). A small input leaves the deepest maps one pixel."""
    return list(dict.fromkeys(name for name, _, shape in module_outputs(model, model.image_size) if len(shape) == 4))


def architecture_table(model: FerNet, input_size: int = 48) -> list[dict]:
    """Every leaf layer with its type, parameter count and output shape (batch of 1), in execution order (a
    layer called twice, as a block's ReLU, is listed at each call)."""
    return [{"name": name, "type": type(module).__name__, "parameters": sum(p.numel() for p in module.parameters()),
             "output_shape": list(shape[1:])}
            for name, module, shape in module_outputs(model, input_size) if not list(module.children())]
