"""The report's network: torchvision ResNet18 whose last layer is Dropout(0.5) + Linear(512, 7),
wrapped with its preprocessing so that the exported artifacts take raw grayscale uint8 images."""

import os
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from schemas.api import ArchitectureRow
from schemas.labels import NUM_CLASSES

# The grey image is replicated to 3 channels, so the ImageNet statistics keep pretrained weights meaningful.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
IMAGENET_FILE = "resnet18-f37072fd.pth"  # torchvision's file name for ResNet18_Weights.IMAGENET1K_V1


def imagenet_weights_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / IMAGENET_FILE


def resolve_weights(weights: str) -> Path | None:
    """`none`, `imagenet` (torch hub cache) or a path to a ResNet18 state dict; fails with what to do."""
    if weights == "none":
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


def build_resnet18(weights: str = "none") -> nn.Module:
    net = torchvision.models.resnet18(weights=None)
    path = resolve_weights(weights)
    if path is not None:
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    net.fc = nn.Sequential(nn.Dropout(0.5), nn.Linear(512, NUM_CLASSES))
    return net


class FerNet(nn.Module):
    """ResNet18 with preprocessing: grayscale pixels (N x 1 x H x W, 0-255) in.

    `forward` takes uint8 and returns probabilities: it is what TorchScript and ONNX export.
    `logits` and `gradcam_forward` take float pixels so that gradients can reach the input.
    """

    def __init__(self, net: nn.Module, image_size: int):
        super().__init__()
        self.net = net
        self.image_size = image_size
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1))

    def preprocess(self, pixels: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(pixels / 255.0, size=[self.image_size, self.image_size], mode="bilinear",
                          align_corners=False)
        return (x.expand(-1, 3, -1, -1) - self.mean) / self.std

    @torch.jit.export
    def logits(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net(self.preprocess(pixels))

    @torch.jit.export
    def gradcam_forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The activations of `layer4` and the logits, for Grad-CAM."""
        n = self.net
        x = n.maxpool(n.relu(n.bn1(n.conv1(self.preprocess(pixels)))))
        features = n.layer4(n.layer3(n.layer2(n.layer1(x))))
        return features, n.fc(torch.flatten(n.avgpool(features), 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(images.float()), dim=1)


def build_model(image_size: int = 48, weights: str = "none") -> FerNet:
    return FerNet(build_resnet18(weights), image_size)


def architecture_table(model: FerNet, input_size: int = 48) -> list[ArchitectureRow]:
    """Every leaf layer of the network with its type, parameter count and output shape (batch of 1)."""
    rows: list[ArchitectureRow] = []
    hooks = []
    for name, module in model.net.named_modules():
        if not list(module.children()):
            def record(module, inputs, output, name=name):
                rows.append(ArchitectureRow(name=name, type=type(module).__name__,
                                            parameters=sum(p.numel() for p in module.parameters()),
                                            output_shape=list(output.shape[1:])))
            hooks.append(module.register_forward_hook(record))
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 1, input_size, input_size, dtype=torch.uint8, device=model.mean.device))
    model.train(was_training)
    for hook in hooks:
        hook.remove()
    return rows
