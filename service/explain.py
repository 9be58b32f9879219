"""Explanations computed with the TorchScript model (they need gradients, whatever backend predicts):
vanilla-gradient saliency (the report's), SmoothGrad, Grad-CAM on layer4, and filter visualisation by
gradient ascent (the report's question 5)."""

import torch
import torch.nn.functional as F

SALIENCY_METHODS = ("vanilla", "smoothgrad", "gradcam")


def conv_layers(model: torch.jit.ScriptModule) -> dict[str, torch.nn.Module]:
    """The network's convolutions by their own module names: conv1, layer1.0.conv1, ..., layer4.1.conv2."""
    return {name: module for name, module in model.net.named_modules() if module.original_name == "Conv2d"}


def _normalise(maps: torch.Tensor) -> torch.Tensor:
    """Each map of N x H x W scaled to [0, 1]."""
    flat = maps.flatten(1)
    low, high = flat.min(1).values.view(-1, 1, 1), flat.max(1).values.view(-1, 1, 1)
    return (maps - low) / (high - low).clamp(min=1e-12)


class Explainer:
    def __init__(self, model: torch.jit.ScriptModule, device: torch.device):
        self.model = model
        self.device = device
        self.layers = conv_layers(model)

    def saliency(self, images: torch.Tensor, method: str, target: int | None = None, samples: int = 16,
                 noise: float = 0.15, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(maps N x S x S in [0, 1] at the network's input size, target indices, probabilities).

        `images` is uint8 N x 1 x H x W; the target is the predicted class unless one is given.
        """
        pixels = images.to(self.device).float()
        with torch.no_grad():
            probabilities = torch.softmax(self.model.logits(pixels), 1)
        targets = probabilities.argmax(1) if target is None else torch.full_like(probabilities[:, 0], target).long()
        if method == "gradcam":
            maps = self._gradcam(pixels, targets)
        else:
            network_input = self.model.preprocess(pixels).detach()
            if method == "vanilla":
                maps = self._input_gradient(network_input, targets)
            else:
                generator = torch.Generator(device=self.device).manual_seed(seed)
                spread = noise * (network_input.amax((1, 2, 3), keepdim=True) - network_input.amin((1, 2, 3), keepdim=True))
                maps = torch.stack([
                    self._input_gradient(network_input + spread * torch.randn(network_input.shape, generator=generator,
                                                                              device=self.device), targets)
                    for _ in range(samples)]).mean(0)
        return _normalise(maps).cpu(), targets.cpu(), probabilities.cpu()

    def _input_gradient(self, network_input: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """|d score_c / d input|, max over the colour channels (the report's vanilla saliency)."""
        network_input = network_input.clone().requires_grad_(True)
        scores = self.model.net(network_input).gather(1, targets[:, None]).sum()
        (gradient,) = torch.autograd.grad(scores, network_input)
        return gradient.abs().amax(1)

    def _gradcam(self, pixels: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        features, logits = self.model.gradcam_forward(pixels)
        (gradient,) = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), features)
        cam = F.relu((gradient.mean((2, 3), keepdim=True) * features).sum(1, keepdim=True))
        size = self.model.image_size
        return F.interpolate(cam, size=[size, size], mode="bilinear", align_corners=False)[:, 0].detach()

    def activation(self, network_input: torch.Tensor, layer: str) -> torch.Tensor:
        """The output of convolution `layer`, computing no more of the network than it needs."""
        net = self.model.net
        if layer == "conv1":
            return net.conv1(network_input)
        x = net.maxpool(net.relu(net.bn1(net.conv1(network_input))))
        stage, block_index, conv = layer.split(".", 2)
        for stage_name in ("layer1", "layer2", "layer3", "layer4"):
            for index, block in enumerate(getattr(net, stage_name).children()):
                if (stage_name, str(index)) == (stage, block_index):
                    return self._block_until(block, x, conv)
                x = block(x)
        raise KeyError(layer)

    @staticmethod
    def _block_until(block, x: torch.Tensor, conv: str) -> torch.Tensor:
        if conv == "downsample.0":
            return dict(block.named_modules())["downsample.0"](x)
        out = block.conv1(x)
        return out if conv == "conv1" else block.conv2(block.relu(block.bn1(out)))

    def filter_inputs(self, layer: str, filters: list[int], steps: int = 64, size: int = 48, lr: float = 4.0,
                      jitter: int = 2, blur_every: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs that most activate each filter: gradient ascent from a grey start, with jitter and blur.

        Returns (images N x size x size in [0, 1], the mean activation each reaches).
        """
        generator = torch.Generator(device=self.device).manual_seed(seed)
        pixels = 128 + 8 * torch.randn((len(filters), 1, size, size), generator=generator, device=self.device)
        pixels.requires_grad_(True)
        optimizer = torch.optim.Adam([pixels], lr=lr)
        index = torch.tensor(filters, device=self.device)
        blur = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]], device=self.device).view(1, 1, 3, 3) / 16
        for step in range(steps):
            shift = torch.randint(-jitter, jitter + 1, (2,), generator=generator, device=self.device).tolist()
            jittered = torch.roll(pixels, shifts=shift, dims=(2, 3))
            response = self._filter_response(jittered, layer, index)
            optimizer.zero_grad(set_to_none=True)
            (-response.sum()).backward()
            optimizer.step()
            with torch.no_grad():
                if blur_every and (step + 1) % blur_every == 0:
                    pixels.copy_(F.conv2d(F.pad(pixels, (1, 1, 1, 1), mode="replicate"), blur))
                pixels.clamp_(0, 255)
        with torch.no_grad():
            final = self._filter_response(pixels, layer, index)
        return _normalise(pixels.detach()[:, 0]).cpu(), final.cpu()

    def _filter_response(self, pixels: torch.Tensor, layer: str, index: torch.Tensor) -> torch.Tensor:
        output = self.activation(self.model.preprocess(pixels), layer)
        return output[torch.arange(len(index), device=self.device), index].mean((1, 2))

    def conv1_weights(self, filters: list[int]) -> torch.Tensor:
        """conv1's kernels as the grey image sees them (the three replicated channels summed), in [0, 1]."""
        weights = self.layers["conv1"].weight.detach()
        effective = (weights / self.model.std.view(1, 3, 1, 1)).sum(1)
        return _normalise(effective[filters]).cpu()
