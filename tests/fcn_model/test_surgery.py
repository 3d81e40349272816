"""Net surgery: torchvision-layout VGG16 weights become FCN convolutions."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from fcnrs.fcn_model import FCN8s, FCN32s, WeightsError, load_vgg16_weights
from fcnrs.fcn_model.surgery import adapt_first_layer


def torchvision_vgg16(num_classes: int = 1000) -> tuple[nn.Sequential, nn.Sequential]:
    """VGG16 (configuration D) with torchvision's module indexes, built here so the
    test needs no torchvision: ``features`` and ``classifier``."""
    layers: list[nn.Module] = []
    channels = 3
    for v in (
        64,
        64,
        "M",
        128,
        128,
        "M",
        256,
        256,
        256,
        "M",
        512,
        512,
        512,
        "M",
        512,
        512,
        512,
        "M",
    ):
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(channels, v, 3, padding=1), nn.ReLU(inplace=True)]
            channels = v
    features = nn.Sequential(*layers)
    classifier = nn.Sequential(
        nn.Linear(512 * 7 * 7, 4096),
        nn.ReLU(True),
        nn.Dropout(),
        nn.Linear(4096, 4096),
        nn.ReLU(True),
        nn.Dropout(),
        nn.Linear(4096, num_classes),
    )
    return features, classifier


@pytest.fixture(scope="module")
def vgg16_file(tmp_path_factory):
    """A VGG16 state dict with random weights, the names and shapes torchvision uses.
    Scaled so activations stay in a sensible range through 16 layers."""
    torch.manual_seed(0)
    features, classifier = torchvision_vgg16()
    for m in list(features) + list(classifier):
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.uniform_(m.bias, -0.1, 0.1)
    state = {f"features.{k}": v for k, v in features.state_dict().items()}
    state |= {f"classifier.{k}": v for k, v in classifier.state_dict().items()}
    path = tmp_path_factory.mktemp("weights") / "vgg16.pth"
    torch.save(state, path)
    return path, features.eval(), classifier.eval()


def fc7_reference(features, classifier, x):
    with torch.inference_mode():
        pool5 = features(x)
        return classifier[:5](torch.flatten(pool5, 1)), pool5


def test_convolutionalised_fc7_equals_the_classifier_at_224(vgg16_file):
    path, features, classifier = vgg16_file
    model = load_vgg16_weights(FCN8s(21), path).eval()
    x = torch.randn(2, 3, 224, 224)
    expected, _ = fc7_reference(features, classifier, x)
    with torch.inference_mode():
        fc7 = model.forward_features(x)["fc7"]
    assert fc7.shape == (2, 4096, 7, 7)
    # fc6's 7x7 window covers all of pool5 only at the centre cell.
    torch.testing.assert_close(fc7[:, :, 3, 3], expected, rtol=1e-4, atol=1e-4)
    assert expected.abs().mean() > 0.01  # the comparison is not between zeros


def test_larger_input_gives_a_spatial_map_of_classifier_outputs(vgg16_file):
    path, features, classifier = vgg16_file
    model = load_vgg16_weights(FCN32s(5), path).eval()
    x = torch.randn(1, 3, 320, 288)  # pool5 is 10 x 9
    with torch.inference_mode():
        fc7 = model.forward_features(x)["fc7"]
        pool5 = features(x)
    assert fc7.shape[-2:] == (10, 9)
    # Every cell whose 7x7 window lies inside pool5 is the classifier applied there.
    for i in range(3, 7):
        for j in range(3, 6):
            window = pool5[:, :, i - 3 : i + 4, j - 3 : j + 4]
            with torch.inference_mode():
                expected = classifier[:5](torch.flatten(window, 1))
            torch.testing.assert_close(fc7[:, :, i, j], expected, rtol=1e-4, atol=1e-4)


def test_safetensors_weights_load_the_same(vgg16_file, tmp_path):
    path, _, _ = vgg16_file
    state = torch.load(path, weights_only=True)
    st_path = tmp_path / "vgg16.safetensors"
    save_file(state, st_path)
    a = load_vgg16_weights(FCN8s(3), path)
    b = load_vgg16_weights(FCN8s(3), st_path)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        if ka.startswith(("conv", "fc")):
            assert ka == kb and torch.equal(va, vb)


@pytest.mark.parametrize("bands", [1, 2, 4, 13])
def test_other_band_counts_respond_to_a_flat_image_like_rgb(vgg16_file, bands):
    path, _, _ = vgg16_file
    rgb = load_vgg16_weights(FCN8s(2, in_channels=3), path)
    multi = load_vgg16_weights(FCN8s(2, in_channels=bands), path)
    x = torch.full((1, 3, 32, 32), 0.7)
    with torch.inference_mode():
        a = rgb.conv1_1(x)
        b = multi.conv1_1(torch.full((1, bands, 32, 32), 0.7))
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert torch.equal(multi.conv1_2.weight, rgb.conv1_2.weight)
    if bands > 3:  # the first three bands keep the RGB filters, scaled
        w = torch.load(path, weights_only=True)["features.0.weight"]
        torch.testing.assert_close(multi.conv1_1.weight[:, :3], w * 3 / bands)


def test_three_band_network_gets_the_files_rgb_filters_and_more_bands_are_derived(vgg16_file):
    path, features, _ = vgg16_file
    rgb = features[0].weight.detach()
    three = load_vgg16_weights(FCN8s(2, in_channels=3), path)
    assert torch.equal(three.conv1_1.weight.detach(), rgb)
    four = load_vgg16_weights(FCN8s(2, in_channels=4), path).conv1_1.weight.detach()
    assert torch.allclose(four[:, :3], rgb * 0.75)
    assert torch.allclose(four[:, 3], rgb.mean(dim=1) * 0.75)
    two = adapt_first_layer(rgb, 2)
    assert two.shape == (64, 2, 3, 3) and torch.allclose(two[:, 1], rgb.mean(dim=1) * 1.5)
    # The three-band result is a copy: training it never changes the loaded file's tensor.
    copy = adapt_first_layer(rgb, 3)
    copy.add_(1.0)
    assert torch.equal(features[0].weight.detach(), rgb) and not torch.equal(copy, rgb)


def test_width_other_than_one_is_refused(vgg16_file):
    path, _, _ = vgg16_file
    with pytest.raises(WeightsError, match=r"width=1\.0"):
        load_vgg16_weights(FCN8s(2, width=0.5), path)


def test_a_file_that_is_not_vgg16_fails_naming_it(tmp_path):
    bad = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, bad)
    with pytest.raises(WeightsError, match=r"resnet\.pth.*missing features\.0\.weight"):
        load_vgg16_weights(FCN8s(2), bad)
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not weights at all")
    with pytest.raises(WeightsError, match=r"junk\.bin"):
        load_vgg16_weights(FCN8s(2), junk)
