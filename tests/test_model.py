import math

import pytest
import torch
import torchvision
from torch import nn

from training.augment import augment, gaussian_blur, random_erasing, reframe
from service.runtime.architectures import build_model, resnet18
from training.train import resolve_weights


def test_layers_are_the_reports_resnet18():
    net = resnet18(7)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(convs) == 20 and len(norms) == 20
    assert convs[0].weight.shape == (64, 3, 7, 7) and convs[0].stride == (2, 2) and convs[0].padding == (3, 3)
    assert [tuple(m.weight.shape) for m in convs[-3:]] == [(512, 256, 1, 1), (512, 512, 3, 3), (512, 512, 3, 3)]
    assert isinstance(net.fc, nn.Sequential) and len(net.fc) == 2
    dropout, linear = net.fc
    assert isinstance(dropout, nn.Dropout) and dropout.p == 0.5
    assert isinstance(linear, nn.Linear) and (linear.in_features, linear.out_features) == (512, 7)
    assert sum(p.numel() for p in net.parameters()) == 11_180_103  # torchvision's 11,689,512 less fc 1000 + 7 outputs


@pytest.mark.parametrize("image_size", [48, 96])
def test_every_layer_output_follows_the_convolution_arithmetic(image_size):
    """out = floor((W + 2P - K) / S) + 1 for every convolution and pooling layer."""
    model = build_model("resnet18", image_size).eval()
    checked = []

    def check(module, inputs, output):
        width = inputs[0].shape[-1]
        pair = lambda v: v if isinstance(v, tuple) else (v, v)  # noqa: E731
        kernel, stride, padding = pair(module.kernel_size)[1], pair(module.stride)[1], pair(module.padding)[1]
        assert output.shape[-1] == math.floor((width + 2 * padding - kernel) / stride) + 1
        checked.append(module)

    for module in model.net.modules():
        if isinstance(module, (nn.Conv2d, nn.MaxPool2d)):
            module.register_forward_hook(check)
    with torch.no_grad():
        model(torch.zeros(1, 1, 48, 48, dtype=torch.uint8))
    assert len(checked) == 21


def test_model_takes_uint8_grayscale_of_any_size_and_returns_probabilities():
    model = build_model("resnet18", 48).eval()
    for height, width in ((48, 48), (100, 80)):
        with torch.no_grad():
            probabilities = model(torch.randint(0, 256, (3, 1, height, width), dtype=torch.uint8))
        assert probabilities.shape == (3, 7)
        assert torch.allclose(probabilities.sum(1), torch.ones(3), atol=1e-5)


def test_imagenet_weights_missing_says_where_to_put_them(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"resnet18-f37072fd\.pth.*--weights none"):
        resolve_weights("imagenet")
    with pytest.raises(FileNotFoundError, match="not found"):
        resolve_weights(str(tmp_path / "missing.pth"))


def test_weights_from_a_state_dict_file(tmp_path):
    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    net = resnet18(7, resolve_weights(str(path)))
    assert torch.equal(net.conv1.weight, reference.conv1.weight)
    assert isinstance(net.fc[1], nn.Linear) and net.fc[1].out_features == 7


def test_augmentation_keeps_shape_and_changes_images():
    pixels = torch.rand(16, 1, 48, 48) * 255
    out = augment(pixels, torch.Generator().manual_seed(0))
    assert out.shape == pixels.shape and not torch.allclose(out, pixels)
    assert 0 <= float(out.min()) and float(out.max()) <= 255


def test_random_erasing_erases_only_when_drawn():
    pixels = torch.full((64, 1, 48, 48), 7.0)
    erased = random_erasing(pixels, probability=1.0, generator=torch.Generator().manual_seed(0))
    changed = (erased != 7.0).flatten(1).any(1)
    assert changed.float().mean() > 0.9
    assert torch.equal(random_erasing(pixels, probability=0.0), pixels)


def test_reframe_moves_and_blurs_each_face_and_nothing_when_asked_for_nothing():
    pixels = torch.rand(16, 1, 48, 48) * 255
    out = reframe(pixels, torch.Generator().manual_seed(0), (0.85, 1.18), 0.06, 8.0)
    assert out.shape == pixels.shape and not torch.allclose(out, pixels)
    assert 0 <= float(out.min()) and float(out.max()) <= 255
    still = reframe(pixels, None, scale_range=(1.0, 1.0), max_shift=0.0, max_rotation=0.0, max_blur=0.0)
    assert torch.allclose(still, pixels, atol=1e-3)


def test_gaussian_blur_is_per_image_and_keeps_flat_images_flat():
    flat = torch.full((2, 1, 16, 16), 100.0)
    assert torch.allclose(gaussian_blur(flat, torch.tensor([0.5, 1.0])), flat)
    noise = torch.rand(2, 1, 32, 32) * 255
    blurred = gaussian_blur(noise, torch.tensor([0.0, 1.0]))
    assert torch.allclose(blurred[0], noise[0])  # sigma 0: untouched
    assert blurred[1].std() < 0.6 * noise[1].std()


def test_jensen_shannon_consistency_is_zero_only_for_equal_predictions():
    from training.train import jensen_shannon

    logits = torch.randn(8, 7)
    assert float(jensen_shannon(logits, logits.clone())) == pytest.approx(0.0, abs=1e-6)
    other = torch.randn(8, 7)
    divergence = float(jensen_shannon(logits, other))
    assert 0 < divergence <= math.log(2) + 1e-6  # bounded by log 2 for two distributions
    assert divergence == pytest.approx(float(jensen_shannon(other, logits)), rel=1e-5)
