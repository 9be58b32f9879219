"""Explanations over the eager model rebuilt from the model directory's weights (frozen: gradients are taken
with respect to inputs only): saliency methods from Captum, one registry of them, and filter visualisation by
gradient ascent (the report's question 5).

Every method runs the network through `FerNet.net`, whose forward pre-hook checks a cancellation event, so a
request whose client has gone, or a service that is shutting down, stops at the next forward pass (a
SmoothGrad sample, an Integrated-Gradients step, an occlusion window, a gradient-ascent step).
"""

import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from captum.attr import (
    GuidedGradCam,
    IntegratedGradients,
    LayerAttribution,
    LayerGradCam,
    NoiseTunnel,
    Occlusion,
    Saliency,
)
from torch import nn

from service.runtime.architectures import GRADCAM_LAYERS, FerNet, conv_layers, spatial_layers


class Cancelled(RuntimeError):
    """The work was cancelled between two forward passes."""


# The network's forward as the methods call it: float inputs to one score per class, or to one score per image.
Forward = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class SaliencyMethod:
    name: str
    description: str
    # (explainer, forward, inputs, targets or None where `forward` gives one score per image, layer) -> maps
    attribute: Callable[["Explainer", Forward, torch.Tensor, torch.Tensor | None, str | None], torch.Tensor]
    uses_layer: bool = False  # whether `?layer=` applies
    # whether the method's one forward pass is of the inputs as they are, so that pass can also give the
    # probabilities and the predicted class (no separate forward pass first)
    single_pass: bool = False
    # cost, for admission budgets: forward passes for (images, side of the network's input)
    forward_passes: Callable[[int, int], int] = lambda images, side: images


def _channel_max(attributions: torch.Tensor) -> torch.Tensor:
    """The report's reduction: |attribution|, max over the three replicated colour channels."""
    return attributions.abs().amax(1)


def _upsampled(explainer: "Explainer", maps: torch.Tensor) -> torch.Tensor:
    size = explainer.model.image_size
    return LayerAttribution.interpolate(maps, (size, size), interpolate_mode="bilinear")[:, 0]


def _vanilla(explainer, forward, inputs, targets, layer):
    return _channel_max(Saliency(forward).attribute(inputs, target=targets, abs=True))


SMOOTHGRAD_SAMPLES = 16
SMOOTHGRAD_NOISE = 0.15  # of each image's value range, as Smilkov et al. (2017) suggest (10-20 %)


def _smoothgrad(explainer, forward, inputs, targets, layer):
    spread = SMOOTHGRAD_NOISE * float(inputs.detach().amax() - inputs.detach().amin())
    tunnel = NoiseTunnel(Saliency(forward))
    return _channel_max(tunnel.attribute(inputs, nt_type="smoothgrad", nt_samples=SMOOTHGRAD_SAMPLES,
                                         nt_samples_batch_size=4, stdevs=spread, target=targets, abs=True))


def _gradcam(explainer, forward, inputs, targets, layer):
    cam = LayerGradCam(forward, explainer.module(layer)).attribute(inputs, target=targets, relu_attributions=True)
    return _upsampled(explainer, cam)


def _guided_gradcam(explainer, forward, inputs, targets, layer):
    # Guided backpropagation overrides the backward of the network's own ReLU modules: it takes the network.
    guided = GuidedGradCam(explainer.model.net, explainer.module(layer))
    return _channel_max(guided.attribute(inputs, target=targets, interpolate_mode="bilinear"))


IG_STEPS = 32


def _integrated_gradients(explainer, forward, inputs, targets, layer):
    black = explainer.model.preprocess(torch.zeros_like(inputs[:, :1, :1, :1])).expand_as(inputs)
    method = IntegratedGradients(forward)
    return _channel_max(method.attribute(inputs, baselines=black, target=targets, n_steps=IG_STEPS,
                                         internal_batch_size=max(len(inputs) * 8, 8)))


OCCLUSION_WINDOW, OCCLUSION_STRIDE = 8, 4  # in pixels of the network's input


def _occlusion(explainer, forward, inputs, targets, layer):
    # Baseline 0 is the mean grey after normalisation; how much the score falls when a patch is hidden.
    drop = Occlusion(forward).attribute(
        inputs, sliding_window_shapes=(3, OCCLUSION_WINDOW, OCCLUSION_WINDOW),
        strides=(3, OCCLUSION_STRIDE, OCCLUSION_STRIDE), baselines=0.0, target=targets, perturbations_per_eval=16)
    return drop[:, 0].clamp(min=0)


def _occlusion_passes(images: int, side: int) -> int:
    windows = (-(-(side - OCCLUSION_WINDOW) // OCCLUSION_STRIDE) + 1) ** 2  # Captum rounds the last window up
    return images * (windows + 1)


METHODS: dict[str, SaliencyMethod] = {method.name: method for method in (
    SaliencyMethod("vanilla", "|d score / d input|, max over channels (the report's saliency; Captum Saliency)",
                   _vanilla, single_pass=True),
    SaliencyMethod("smoothgrad", f"vanilla gradients averaged over {SMOOTHGRAD_SAMPLES} noisy copies "
                                 "(Captum NoiseTunnel)", _smoothgrad,
                   forward_passes=lambda images, side: images * SMOOTHGRAD_SAMPLES),
    SaliencyMethod("gradcam", "Grad-CAM on a convolutional layer, upsampled (Captum LayerGradCam)", _gradcam,
                   uses_layer=True, single_pass=True),
    SaliencyMethod("integrated_gradients", f"Integrated Gradients from a black image, {IG_STEPS} steps "
                                           "(Captum IntegratedGradients)", _integrated_gradients,
                   forward_passes=lambda images, side: images * IG_STEPS),
    SaliencyMethod("occlusion", f"score drop when an {OCCLUSION_WINDOW}x{OCCLUSION_WINDOW} patch is greyed "
                                "(Captum Occlusion)", _occlusion, forward_passes=_occlusion_passes),
    SaliencyMethod("guided_gradcam", "Grad-CAM times guided backpropagation (Captum GuidedGradCam)",
                   _guided_gradcam, uses_layer=True),
)}


def normalise(maps: torch.Tensor) -> torch.Tensor:
    """Each map of N x H x W scaled to [0, 1]."""
    flat = maps.flatten(1)
    low, high = flat.min(1).values.view(-1, 1, 1), flat.max(1).values.view(-1, 1, 1)
    return (maps - low) / (high - low).clamp(min=1e-12)


class _PredictedClassScore:
    """The network's forward that returns each image's highest score, so a method needs no target, and keeps
    the scores of every class from its last call: a single-pass method's own forward pass then also gives the
    probabilities and the predicted class."""

    def __init__(self, net: nn.Module):
        self.net = net
        self.logits: torch.Tensor | None = None

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        logits = self.net(inputs)
        self.logits = logits.detach()
        return logits.gather(1, self.logits.argmax(1, keepdim=True))[:, 0]


class _Reached(Exception):
    """Raised by a forward hook once the layer of interest has run: the rest of the network is not needed."""


class Explainer:
    def __init__(self, model: FerNet, architecture: str, device: torch.device):
        self.model = model
        self.device = device
        self.layers = conv_layers(model)
        self.spatial_layers = spatial_layers(model)
        self.default_layer = GRADCAM_LAYERS.get(architecture, next(reversed(self.layers)))
        self._cancel = threading.local()
        model.net.register_forward_pre_hook(self._check_cancelled)

    def _check_cancelled(self, module, inputs) -> None:
        event = getattr(self._cancel, "event", None)
        if event is not None and event.is_set():
            raise Cancelled("cancelled")

    def module(self, layer: str | None) -> nn.Module:
        """A layer of the network by module name (conv layers and stages such as layer4)."""
        name = layer or self.default_layer
        try:
            return self.model.net.get_submodule(name)
        except AttributeError:
            raise KeyError(name) from None

    @contextlib.contextmanager
    def _cancellable(self, cancel: threading.Event | None):
        """Within it, the forward pre-hook of this thread raises Cancelled once `cancel` is set."""
        self._cancel.event = cancel
        try:
            yield
        finally:
            self._cancel.event = None

    def saliency(self, images: torch.Tensor, method: str, target: int | torch.Tensor | None = None,
                 layer: str | None = None,
                 cancel: threading.Event | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(maps N x S x S in [0, 1] at the network's input size, target indices, probabilities).

        `images` is uint8 N x 1 x H x W; the target is the predicted class unless one is given, for all images
        (an int) or per image (a tensor of N indices: the caller has predicted them, so no prediction pass is
        made and the probabilities are None).
        """
        if method not in METHODS:
            raise ValueError(f"unknown saliency method {method!r}: expected one of {', '.join(METHODS)}")
        spec = METHODS[method]
        with self._cancellable(cancel):
            inputs = self.model.preprocess(images.to(self.device).float()).requires_grad_(True)
            if spec.single_pass and target is None:
                forward = _PredictedClassScore(self.model.net)
                maps = spec.attribute(self, forward, inputs, None, layer)
                probabilities = torch.softmax(forward.logits, 1)
                targets = probabilities.argmax(1)
            elif isinstance(target, torch.Tensor):
                targets, probabilities = target.to(inputs.device).long(), None
                maps = spec.attribute(self, self.model.net, inputs, targets, layer)
            else:
                with torch.no_grad():
                    probabilities = torch.softmax(self.model.net(inputs), 1)
                targets = probabilities.argmax(1) if target is None \
                    else torch.full_like(probabilities[:, 0], target).long()
                maps = spec.attribute(self, self.model.net, inputs, targets, layer)
        return normalise(maps.detach()).cpu(), targets.cpu(), None if probabilities is None else probabilities.cpu()

    def activation(self, network_input: torch.Tensor, layer: str) -> torch.Tensor:
        """The output of `layer`, computing no more of the network than it needs."""
        captured = {}

        def capture(module, inputs, output):
            captured["output"] = output
            raise _Reached

        handle = self.module(layer).register_forward_hook(capture)
        try:
            self.model.net(network_input)
        except _Reached:
            pass
        finally:
            handle.remove()
        return captured["output"]

    def filter_inputs(self, layer: str, filters: list[int], steps: int = 64, size: int = 48, lr: float = 4.0,
                      jitter: int = 2, blur_every: int = 4, seed: int = 0,
                      cancel: threading.Event | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs that most activate each filter: gradient ascent from a grey start, with jitter and blur.

        Returns (images N x size x size in [0, 1], the mean activation each reaches).
        """
        generator = torch.Generator(device=self.device).manual_seed(seed)
        pixels = 128 + 8 * torch.randn((len(filters), 1, size, size), generator=generator, device=self.device)
        pixels.requires_grad_(True)
        optimizer = torch.optim.Adam([pixels], lr=lr)
        index = torch.tensor(filters, device=self.device)
        blur = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]], device=self.device).view(1, 1, 3, 3) / 16
        with self._cancellable(cancel):
            for step in range(steps):
                shift = torch.randint(-jitter, jitter + 1, (2,), generator=generator, device=self.device).tolist()
                jittered = torch.roll(pixels, shifts=shift, dims=(2, 3))
                response = self._filter_response(jittered, layer, index)
                (gradient,) = torch.autograd.grad(response.sum(), pixels)
                optimizer.zero_grad(set_to_none=True)
                pixels.grad = -gradient  # ascent
                optimizer.step()
                with torch.no_grad():
                    if blur_every and (step + 1) % blur_every == 0:
                        pixels.copy_(F.conv2d(F.pad(pixels, (1, 1, 1, 1), mode="replicate"), blur))
                    pixels.clamp_(0, 255)
            with torch.no_grad():
                final = self._filter_response(pixels, layer, index)
        return normalise(pixels.detach()[:, 0]).cpu(), final.cpu()

    def _filter_response(self, pixels: torch.Tensor, layer: str, index: torch.Tensor) -> torch.Tensor:
        output = self.activation(self.model.preprocess(pixels), layer)
        return output[torch.arange(len(index), device=self.device), index].mean((1, 2))

    def conv1_weights(self, filters: list[int]) -> torch.Tensor:
        """conv1's kernels as the grey image sees them (the three replicated channels summed), in [0, 1]."""
        weights = self.layers["conv1"].weight.detach()
        effective = (weights / self.model.std.view(1, 3, 1, 1)).sum(1)
        return normalise(effective[filters]).cpu()
