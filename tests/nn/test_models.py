"""Tests for the UNet backbone, heads, configs and PoseModel."""

from __future__ import annotations

import pytest
import torch
import yaml

from napari_pose.nn.models import (
    PRESETS,
    ModelConfig,
    UNet,
    UNetConfig,
    _is_paf,
    build_model,
    pad_to_stride,
)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.mark.parametrize(
    ("max_stride", "output_stride", "size"),
    [(16, 4, 256), (16, 2, 64), (32, 32, 64), (8, 1, 32), (32, 8, 96)],
)
def test_unet_output_shape(max_stride: int, output_stride: int, size: int) -> None:
    config = UNetConfig(filters=4, max_stride=max_stride, output_stride=output_stride)
    net = UNet(config).eval()
    with torch.no_grad():
        out = net(torch.rand(1, 1, size, size))
    assert out.shape == (1, net.out_channels, size // output_stride, size // output_stride)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_build_and_run(preset: str) -> None:
    config = ModelConfig(
        backbone=UNetConfig.preset(preset, in_channels=3), heads={"confmaps": 5, "pafs": 4}
    )
    model = build_model(config).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 64, 64))
    stride = config.backbone.output_stride
    assert out["confmaps"].shape == (1, 5, 64 // stride, 64 // stride)
    assert out["pafs"].shape == (1, 8, 64 // stride, 64 // stride)
    # Heads start at zero: an untrained model predicts the empty maps targets mostly are.
    assert not out["confmaps"].any() and not out["pafs"].any()


def test_unknown_preset() -> None:
    with pytest.raises(ValueError, match="unknown preset"):
        UNetConfig.preset("huge")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_stride": 12},
        {"output_stride": 3},
        {"max_stride": 8, "output_stride": 16},
        {"in_channels": 0},
        {"norm": "layer"},
    ],
)
def test_invalid_unet_config(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        UNetConfig(**kwargs)


def test_invalid_heads() -> None:
    with pytest.raises(ValueError):
        ModelConfig(heads={})
    with pytest.raises(ValueError):
        ModelConfig(heads={"confmaps": 0})


def test_head_kind_by_name() -> None:
    assert _is_paf("pafs") and not _is_paf("confmaps") and not _is_paf("centroids")


def test_pad_to_stride_odd_sizes() -> None:
    image = torch.rand(2, 1, 101, 77)
    padded, (pad_h, pad_w) = pad_to_stride(image, 16)
    assert padded.shape == (2, 1, 112, 80)
    assert (pad_h, pad_w) == (11, 3)
    # Bottom/right padding keeps original pixels at the same coordinates.
    assert torch.equal(padded[..., :101, :77], image)
    assert padded[..., 101:, :].abs().sum() == 0

    model = build_model(ModelConfig(backbone=UNetConfig(filters=4), heads={"confmaps": 3})).eval()
    with torch.no_grad():
        out = model(padded)["confmaps"]
    assert out.shape == (2, 3, 112 // 4, 80 // 4)


def test_pad_to_stride_noop() -> None:
    image = torch.rand(1, 1, 64, 32)
    padded, padding = pad_to_stride(image, 32)
    assert padded is image and padding == (0, 0)


def test_unpadded_odd_size_rejected() -> None:
    net = UNet(UNetConfig(filters=4))
    with pytest.raises(ValueError, match="pad_to_stride"):
        net(torch.rand(1, 1, 100, 100))


@pytest.mark.parametrize(
    ("norm", "upsampling", "tol"),
    [
        ("batch", "bilinear", 1e-5),
        ("batch", "transpose", 1e-5),
        # GroupNorm's channels_last kernel reduces mean/variance in a different float32 order,
        # which random-init activations amplify to ~3e-5 relative: rounding, not a layout bug.
        ("group", "bilinear", 1e-4),
        ("group", "transpose", 1e-4),
    ],
)
def test_channels_last_matches_contiguous(norm: str, upsampling: str, tol: float) -> None:
    config = ModelConfig(
        backbone=UNetConfig(filters=8, norm=norm, upsampling=upsampling),
        heads={"confmaps": 4, "pafs": 3},
    )
    model = build_model(config).eval()
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        expected = model(x)
        model_cl = model.to(memory_format=torch.channels_last)
        got = model_cl(x.to(memory_format=torch.channels_last))
    for name, maps in expected.items():
        assert got[name].is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(got[name], maps, atol=tol, rtol=tol)


def test_config_round_trip_rebuilds_identical_model() -> None:
    config = ModelConfig(
        backbone=UNetConfig.preset("medium", output_stride=2, norm="group"),
        heads={"confmaps": 7, "pafs": 6},
    )
    data = yaml.safe_load(yaml.safe_dump(config.to_dict()))
    restored = ModelConfig.from_dict(data)
    assert restored == config

    original = build_model(config).state_dict()
    rebuilt = build_model(restored).state_dict()
    assert list(rebuilt) == list(original)
    assert all(rebuilt[k].shape == original[k].shape for k in original)
    # And the weights of one load into the other.
    build_model(restored).load_state_dict(original)


def test_unknown_config_key_rejected() -> None:
    data = UNetConfig().to_dict() | {"filterz": 3}
    with pytest.raises(TypeError):
        UNetConfig.from_dict(data)


def test_overfits_gaussian_blob() -> None:
    """A tiny UNet learns a fixed-location Gaussian confidence map from random images."""
    config = ModelConfig(
        backbone=UNetConfig(filters=8, max_stride=8, output_stride=2), heads={"confmaps": 1}
    )
    model = build_model(config)
    images = torch.rand(4, 1, 32, 32)
    ys, xs = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    blob = torch.exp(-((ys - 5.0) ** 2 + (xs - 10.0) ** 2) / (2 * 1.5**2))
    target = blob.expand(4, 1, 16, 16)

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(100):
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(images)["confmaps"], target)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 5

    model.eval()
    with torch.no_grad():
        pred = model(images)["confmaps"]
    peak = pred[0, 0].flatten().argmax().item()
    assert divmod(peak, 16) == (5, 10)


def test_fused_batchnorm_gives_the_same_maps() -> None:
    from napari_pose.nn.models import fuse_batchnorm

    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone=UNetConfig(filters=4, max_stride=8),
                                    heads={"confmaps": 3, "pafs": 2}))  # fmt: skip
    for module in model.modules():  # non-trivial running statistics and head weights
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    for head in model.heads.values():
        torch.nn.init.normal_(head.weight)
    x = torch.rand(2, 1, 32, 32)
    expected = {k: v.detach() for k, v in model.eval()(x).items()}
    fused = fuse_batchnorm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    for name, maps in fused(x).items():
        torch.testing.assert_close(maps, expected[name], atol=1e-5, rtol=1e-4)
