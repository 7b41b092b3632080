"""Flip test-time augmentation: exact on flip-equivariant models, node pairs swapped back."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_pose.nn.augment import AugmentConfig
from napari_pose.nn.models import ModelConfig, PoseModel, UNetConfig, build_model
from napari_pose.nn.peaks import global_peaks, local_peaks
from napari_pose.nn.pipelines import StageConfig
from napari_pose.nn.predict import predict_single_instance
from napari_pose.nn.tta import FlipAveraged, mirror_of, with_flip_tta


def _config(heads: dict[str, int], stride: int = 4, channels: int = 3) -> ModelConfig:
    backbone = UNetConfig(in_channels=channels, filters=2, max_stride=16, output_stride=stride)
    return ModelConfig(backbone=backbone, heads=heads)


def _blur(x: torch.Tensor, sigma: float = 2.0) -> torch.Tensor:
    """Depthwise Gaussian blur (a symmetric kernel: commutes with any mirror)."""
    r = torch.arange(-8, 9, dtype=x.dtype)
    g = torch.exp(-(r**2) / (2 * sigma**2))
    kernel = (g[:, None] * g[None, :] / g.sum() ** 2).expand(x.shape[1], 1, 17, 17)
    return F.conv2d(x, kernel.contiguous(), padding=8, groups=x.shape[1])


class BlurModel(PoseModel):
    """Flip-equivariant 'model': node ``j``'s map is input channel ``j`` blurred, sampled at
    ``x = j * stride`` like a real model's outputs."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        s = self.output_stride
        return {name: _blur(x)[..., ::s, ::s] for name in self.config.heads}


class WingsModel(PoseModel):
    """Equivariant under a mirror about ``x = W / 2`` *with* nodes 0 and 1 swapped: one image
    channel, node 0 draws what lies left of the axis, node 1 what lies right, node 2 the axis."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        s, width = self.output_stride, x.shape[-1]
        maps = _blur(x)[..., ::s, ::s]
        column = torch.arange(maps.shape[-1]) * s - width / 2
        masks = torch.stack([column < -6, column > 6, column.abs() <= 6]).float()
        return {"confmaps": maps * masks[None, :, None, :]}


def _dots(xy: np.ndarray, size: tuple[int, int], sigma: float = 1.5) -> torch.Tensor:
    """``(1, n, h, w)``: one Gaussian blob per channel at sub-pixel ``xy`` ``(n, 2)``."""
    ys, xs = torch.meshgrid(torch.arange(size[0]), torch.arange(size[1]), indexing="ij")
    xy_t = torch.as_tensor(xy, dtype=torch.float32)
    d2 = (xs - xy_t[:, 0, None, None]) ** 2 + (ys - xy_t[:, 1, None, None]) ** 2
    return torch.exp(-d2 / (2 * sigma**2))[None]


@pytest.mark.parametrize(("stride", "width"), [(4, 64), (2, 64), (1, 48), (4, 50)])
def test_equivariant_model_gives_the_same_peaks(stride, width):
    model = BlurModel(_config({"confmaps": 3}, stride)).eval()
    xy = np.array([[17.3, 20.6], [40.8, 11.2], [25.5, 33.9]])
    images = _dots(xy, (48, width))
    with torch.inference_mode():
        plain, _ = global_peaks(model(images)["confmaps"], stride)
        tta, _ = global_peaks(FlipAveraged(model, [0, 1, 2])(images)["confmaps"], stride)
    np.testing.assert_allclose(tta.numpy(), plain.numpy(), atol=0.05)
    np.testing.assert_allclose(tta[0].numpy(), xy, atol=0.5)  # and the blobs are found


def test_a_naive_flip_would_be_misaligned():
    """What the alignment is for: without it the mirrored maps land stride - 1 pixels off."""
    model = BlurModel(_config({"confmaps": 1})).eval()
    images = _dots(np.array([[30.4, 20.0]]), (48, 64))
    with torch.inference_mode():
        plain, _ = global_peaks(model(images)["confmaps"], 4)
        naive, _ = global_peaks(model(images.flip(-1))["confmaps"].flip(-1), 4)
    assert abs(float(naive[0, 0, 0] - plain[0, 0, 0])) > 2.5


def test_symmetric_pair_is_swapped_back():
    model = WingsModel(_config({"confmaps": 3}, channels=1)).eval()
    # Left wing, right wing, head on the axis x = 32.
    xy = np.array([[20.2, 30.0], [46.1, 26.4], [32.0, 12.7]])
    images = _dots(xy, (48, 64)).sum(dim=1, keepdim=True)
    with torch.inference_mode():
        plain = model(images)["confmaps"]
        paired = FlipAveraged(model, [1, 0, 2])(images)["confmaps"]
        unpaired = FlipAveraged(model, [0, 1, 2])(images)["confmaps"]
    torch.testing.assert_close(paired, plain)
    p_xy, p_val = global_peaks(plain, 4)
    t_xy, t_val = global_peaks(paired, 4)
    np.testing.assert_allclose(t_xy.numpy(), p_xy.numpy(), atol=0.05)
    np.testing.assert_allclose(t_xy[0].numpy(), xy, atol=0.5)
    # Without the swap each wing's map holds half of each wing.
    _, channel, found, value = local_peaks(unpaired, 4, threshold=0.1)
    wings = (channel == 0).nonzero().flatten()
    assert len(wings) == 2
    order = wings[found[wings, 0].argsort()]  # left, then right
    np.testing.assert_allclose(found[order, 0].numpy(), [20.2, 46.1], atol=0.5)
    np.testing.assert_allclose(value[order].numpy(), p_val[0, :2].numpy() / 2, rtol=0.01)


def test_random_weight_model_changes_and_keeps_its_outputs_shape():
    torch.manual_seed(0)
    model = build_model(_config({"confmaps": 3}, channels=1)).eval()
    for head in model.heads.values():  # heads start at zero: draw something
        torch.nn.init.normal_(head.weight, std=0.5)
    images = torch.rand(2, 1, 32, 48)
    with torch.inference_mode():
        plain = model(images)["confmaps"]
        tta = FlipAveraged(model, [1, 0, 2])(images)["confmaps"]
    assert tta.shape == plain.shape and tta.dtype == plain.dtype
    assert (tta - plain).abs().max() > 0.1 * plain.abs().max()


def test_predictors_take_the_wrapped_model():
    config = _config({"confmaps": 1}, channels=1)
    stage = StageConfig(kind="single_instance", model=config, input_size=(48, 64))
    model = BlurModel(config).eval()
    frames = _dots(np.array([[30.4, 20.7]]), (48, 64))
    plain = predict_single_instance(model, stage, frames, threshold=0.01)
    tta = predict_single_instance(FlipAveraged(model, [0]), stage, frames, threshold=0.01)
    np.testing.assert_allclose(tta[0].points, plain[0].points, atol=0.05)
    np.testing.assert_allclose(tta[0].points[0, 0], [30.4, 20.7], atol=0.5)


def test_bottomup_models_are_refused():
    model = build_model(_config({"confmaps": 3, "pafs": 2}))
    with pytest.raises(ValueError, match="bottom-up"):
        FlipAveraged(model, [1, 0, 2])


@pytest.mark.parametrize("mirror", [[0, 1], [1, 1, 2], [1, 2, 0]])
def test_bad_mirrors_are_refused(mirror):
    with pytest.raises(ValueError, match="mirror"):
        FlipAveraged(build_model(_config({"confmaps": 3})), mirror)


def test_with_flip_tta_wraps_all_but_bottomup():
    kinds = {"centroid": {"centroids": 1}, "centered_instance": {"confmaps": 3},
             "bottomup": {"confmaps": 3, "pafs": 2}}  # fmt: skip
    stages = {k: StageConfig(kind=k, model=_config(h), input_size=(64, 64))
              for k, h in kinds.items()}  # fmt: skip
    models = {k: build_model(s.model).eval() for k, s in stages.items()}
    wrapped = with_flip_tta(models, stages, np.array([1, 0, 2]))
    assert isinstance(wrapped["centroid"], FlipAveraged)
    assert isinstance(wrapped["centered_instance"], FlipAveraged)
    assert wrapped["bottomup"] is models["bottomup"]
    assert not wrapped["centroid"].training
    assert wrapped["centroid"].output_stride == models["centroid"].output_stride


def test_pose_models_trained_without_flips_are_not_flip_averaged():
    """A model that never saw a mirrored animal names its sides by chirality: averaging it over
    a mirror image would blend each left node with its right partner (clip.slp: mAP 0.40 ->
    0.04); only the centroid model, one map without sides, is still averaged."""
    no_flips = AugmentConfig(flip=False)
    stages = {k: StageConfig(kind=k, model=_config(h), input_size=(64, 64), augment=no_flips)
              for k, h in {"centroid": {"centroids": 1},
                           "centered_instance": {"confmaps": 3}}.items()}  # fmt: skip
    models = {k: build_model(s.model).eval() for k, s in stages.items()}
    wrapped = with_flip_tta(models, stages, np.array([1, 0, 2]))
    assert isinstance(wrapped["centroid"], FlipAveraged)
    assert wrapped["centered_instance"] is models["centered_instance"]


def test_the_mirror_comes_from_the_package_flip_pairs():
    names = ["head", "wingL", "wingR", "eyeL", "eyeR"]
    mirror = mirror_of(names, [["wingL", "wingR"], ["eyeL", "eyeR"]])
    assert mirror.tolist() == [0, 2, 1, 4, 3]
    assert mirror_of(names, []).tolist() == [0, 1, 2, 3, 4]
