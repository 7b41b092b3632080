"""Test-time augmentation. Flip: exact on flip-equivariant models, node pairs swapped back.
Rotation: turned and turned back about the same point, peaks kept on rotation-equivariant
models."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import sleap_io as sio
import torch
import torch.nn.functional as F

from napari_pose.nn.augment import AugmentConfig
from napari_pose.nn.inference import PredictConfig, Predictor
from napari_pose.nn.models import ModelConfig, PoseModel, UNetConfig, build_model
from napari_pose.nn.package import ModelPackage
from napari_pose.nn.peaks import global_peaks, local_peaks
from napari_pose.nn.pipelines import StageConfig
from napari_pose.nn.predict import predict_single_instance
from napari_pose.nn.tta import (
    FlipAveraged,
    RotationAveraged,
    mirror_of,
    rotate_maps,
    with_flip_tta,
    with_rotation_tta,
)


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


# Rotation.


def _turned(xy: tuple[float, float], degrees: float, centre: tuple[float, float]):
    """Where ``rotate_maps`` should carry ``xy``: counterclockwise as displayed, rows down."""
    a = math.radians(degrees)
    dx, dy = xy[0] - centre[0], xy[1] - centre[1]
    return (centre[0] + math.cos(a) * dx + math.sin(a) * dy,
            centre[1] - math.sin(a) * dx + math.cos(a) * dy)  # fmt: skip


def _centre_of_mass(maps: torch.Tensor) -> np.ndarray:
    """``(x, y)`` of each map of ``(B, C, h, w)``, ``(B, C, 2)``: the peak of a symmetric blob
    well inside the map. (``global_peaks``' three-point fit is itself ~0.15 px off on a blob
    resampled bilinearly, whose top is no longer a Gaussian's.)"""
    ys, xs = torch.meshgrid(torch.arange(maps.shape[-2]), torch.arange(maps.shape[-1]),
                            indexing="ij")  # fmt: skip
    mass = maps.double().sum(dim=(-2, -1))
    x = (maps.double() * xs).sum(dim=(-2, -1)) / mass
    y = (maps.double() * ys).sum(dim=(-2, -1)) / mass
    return torch.stack([x, y], dim=-1).numpy()


SIZE = (40, 56)  # (h, w): not square
CENTRE = ((SIZE[1] - 1) / 2, (SIZE[0] - 1) / 2)


@pytest.mark.parametrize("xy", [(40.3, 12.6), (17.8, 30.1), (45.5, 25.5)])
def test_a_turn_moves_a_blob_counterclockwise_about_the_centre(xy):
    blob = _dots(np.array([xy]), SIZE, sigma=2.0)
    found = _centre_of_mass(rotate_maps(blob, 30.0))[0, 0]
    np.testing.assert_allclose(found, _turned(xy, 30.0, CENTRE), atol=0.1)
    # The direction matters: the other way round is far off.
    assert np.linalg.norm(found - np.array(_turned(xy, -30.0, CENTRE))) > 5


@pytest.mark.parametrize("xy", [(40.3, 12.6), (17.8, 30.1), (45.5, 25.5)])
def test_a_turn_and_the_turn_back_return_a_blob_where_it_was(xy):
    blob = _dots(np.array([xy]), SIZE, sigma=2.0)
    back = rotate_maps(rotate_maps(blob, 30.0), -30.0)
    np.testing.assert_allclose(_centre_of_mass(back)[0, 0], xy, atol=0.1)
    peak, _ = global_peaks(back, 1)
    np.testing.assert_allclose(peak[0, 0].numpy(), xy, atol=0.2)
    # Turning the same way twice is not a turn back.
    twice = _centre_of_mass(rotate_maps(rotate_maps(blob, 30.0), 30.0))[0, 0]
    assert np.linalg.norm(twice - np.array(xy)) > 5


def test_a_blob_at_the_centre_stays_put():
    blob = _dots(np.array([CENTRE]), SIZE, sigma=2.0)
    for degrees in (15.0, -40.0):
        turned = rotate_maps(blob, degrees)
        np.testing.assert_allclose(_centre_of_mass(turned)[0, 0], CENTRE, atol=0.02)
        assert float(turned.max()) > 0.9 * float(blob.max())
    # About another point it moves.
    moved = rotate_maps(blob, 30.0, centre=(10.0, 10.0))
    np.testing.assert_allclose(_centre_of_mass(moved)[0, 0],
                               _turned(CENTRE, 30.0, (10.0, 10.0)), atol=0.1)  # fmt: skip


def test_rotate_maps_takes_an_angle_per_map_and_keeps_the_dtype():
    blobs = _dots(np.array([[40.3, 12.6], [17.8, 30.1]]), SIZE).reshape(2, 1, *SIZE)
    both = rotate_maps(blobs, torch.tensor([20.0, -35.0]))
    torch.testing.assert_close(both[:1], rotate_maps(blobs[:1], 20.0))
    torch.testing.assert_close(both[1:], rotate_maps(blobs[1:], -35.0))
    for dtype in (torch.float16, torch.float64):
        turned = rotate_maps(blobs.to(dtype), 20.0)
        assert turned.dtype == dtype
        np.testing.assert_allclose(_centre_of_mass(turned)[0, 0],
                                   _centre_of_mass(both)[0, 0], atol=0.02)  # fmt: skip


class OnesModel(PoseModel):
    """Maps of ones whatever the input: what every pass draws, right up to the edges."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h, w = x.shape[-2] // self.output_stride, x.shape[-1] // self.output_stride
        return {name: x.new_ones(len(x), n, h, w) for name, n in self.config.heads.items()}


@pytest.mark.parametrize(("stride", "degrees"), [(1, 15), (2, 15), (2, 45)])
def test_rotation_keeps_the_peaks_of_a_rotation_equivariant_model(stride, degrees):
    """A round blur is rotation-equivariant: each turned pass, turned back, draws each blob
    where the plain pass does, so the average keeps the peaks and nearly their height (a pass
    turned back the wrong way, or about the wrong point, would draw them elsewhere and leave
    about a third of the height)."""
    model = BlurModel(_config({"confmaps": 3}, stride)).eval()
    xy = np.array([[17.3, 20.6], [48.8, 11.2], [25.5, 37.9]])
    images = _dots(xy, (48, 64))
    with torch.inference_mode():
        plain, plain_value = global_peaks(model(images)["confmaps"], stride)
        maps = RotationAveraged(model, degrees)(images)["confmaps"]
    tta, tta_value = global_peaks(maps, stride)
    assert maps.shape == (1, 3, 48 // stride, 64 // stride)
    np.testing.assert_allclose(tta.numpy(), plain.numpy(), atol=0.25)
    np.testing.assert_allclose(tta[0].numpy(), xy, atol=0.5)
    assert (tta_value > 0.85 * plain_value).all()


def test_rotation_turns_back_about_the_input_centre_on_the_output_grid():
    """At stride 4 the input centre ``(31.5, 23.5)`` is output pixel ``(7.875, 5.875)``, not the
    output grid's middle ``(7.5, 5.5)``: turned back about the latter, a blob at the centre
    would come back 1.5 input pixels off in each turned pass."""
    model = BlurModel(_config({"confmaps": 1}, 4)).eval()
    centre = np.array([[31.5, 23.5]])
    images = _dots(centre, (48, 64), sigma=3.0)
    with torch.inference_mode():
        plain, _ = global_peaks(model(images)["confmaps"], 4)
        tta, _ = global_peaks(RotationAveraged(model, 60)(images)["confmaps"], 4)
    np.testing.assert_allclose(tta.numpy(), plain.numpy(), atol=0.15)


def test_pixels_a_turned_pass_missed_keep_the_passes_that_saw_them():
    """Corners of the output fall outside the turned-back maps: there the mean is over the
    passes that covered them (weighted by how much), not a third of the plain pass."""
    model = OnesModel(_config({"confmaps": 2, "centroids": 1}, 2)).eval()
    with torch.inference_mode():
        out = RotationAveraged(model, 30)(torch.rand(2, 3, 48, 64))
    for maps in out.values():
        assert maps.shape[-2:] == (24, 32)
        torch.testing.assert_close(maps, torch.ones_like(maps))


def test_rotation_refuses_bottomup_models_and_large_angles():
    with pytest.raises(ValueError, match="part-affinity fields are vectors"):
        RotationAveraged(build_model(_config({"confmaps": 3, "pafs": 2})), 15)
    for degrees in (0, -10, 90, 135, float("nan")):
        with pytest.raises(ValueError, match="below 90"):
            RotationAveraged(build_model(_config({"confmaps": 3})), degrees)


def test_with_rotation_tta_wraps_what_trained_with_rotations_but_bottomup():
    small = AugmentConfig(rotation=10)
    kinds = {"centroid": ({"centroids": 1}, AugmentConfig()),
             "centered_instance": ({"confmaps": 3}, small),
             "single_instance": ({"confmaps": 3}, AugmentConfig()),
             "bottomup": ({"confmaps": 3, "pafs": 2}, AugmentConfig())}  # fmt: skip
    stages = {k: StageConfig(kind=k, model=_config(h), input_size=(64, 64), augment=a)
              for k, (h, a) in kinds.items()}  # fmt: skip
    models = {k: build_model(s.model).eval() for k, s in stages.items()}
    wrapped = with_rotation_tta(models, stages, 15)
    assert isinstance(wrapped["centroid"], RotationAveraged)
    assert isinstance(wrapped["single_instance"], RotationAveraged)
    assert wrapped["centered_instance"] is models["centered_instance"]  # trained within 10
    assert wrapped["bottomup"] is models["bottomup"]
    assert not wrapped["centroid"].training
    assert wrapped["centroid"].output_stride == models["centroid"].output_stride
    assert with_rotation_tta(models, stages, 10)["centered_instance"] is not models[
        "centered_instance"]  # fmt: skip
    with pytest.raises(ValueError, match="below 90"):
        with_rotation_tta(models, stages, 100)


def _package(model: PoseModel) -> ModelPackage:
    stage = StageConfig(kind="single_instance", model=model.config, input_size=(48, 64))
    return ModelPackage(Path("tiny"), "single_instance", {"single_instance": stage},
                        {"single_instance": model.eval()}, sio.Skeleton(["head"]),
                        max_instances=1, config={})  # fmt: skip


def test_predict_config_rotation_tta_end_to_end():
    """``PredictConfig.rotation_tta`` wraps the package's models (around the flip when both
    are on) and a run predicts every frame: the same points from a rotation-equivariant
    model, other points from a random one."""
    xy = np.array([[20.4, 17.7], [41.2, 30.3], [33.0, 24.6], [12.8, 35.1], [50.5, 9.9]])
    frames = (np.stack([_dots(p[None], (48, 64))[0, 0].numpy() for p in xy]) * 255).astype(
        np.uint8)  # fmt: skip
    blur = BlurModel(_config({"confmaps": 1}, stride=2, channels=1))
    plain = Predictor(_package(blur), PredictConfig(device="cpu")).predict(frames)
    turned = Predictor(_package(blur), PredictConfig(device="cpu", rotation_tta=15))
    assert isinstance(turned.package.models["single_instance"], RotationAveraged)
    predicted = turned.predict(frames)
    assert len(predicted) == len(plain) == len(frames)
    np.testing.assert_allclose(np.stack([p.points[0, 0] for p in predicted]),
                               np.stack([p.points[0, 0] for p in plain]), atol=0.25)  # fmt: skip
    np.testing.assert_allclose(np.stack([p.points[0, 0] for p in predicted]), xy, atol=0.5)

    torch.manual_seed(0)
    random = build_model(_config({"confmaps": 1}, stride=2, channels=1))
    for head in random.heads.values():  # heads start at zero: draw something
        torch.nn.init.normal_(head.weight, std=0.5)
    both = Predictor(_package(random), PredictConfig(device="cpu", flip_tta=True,
                                                     rotation_tta=15))  # fmt: skip
    wrapped = both.package.models["single_instance"]
    assert isinstance(wrapped, RotationAveraged) and isinstance(wrapped.model, FlipAveraged)
    assert len(both.predict(frames)) == len(frames)
    maps = both.confidence_maps(frames)["confmaps"]
    flipped = Predictor(_package(random), PredictConfig(device="cpu", flip_tta=True))
    only_flipped = flipped.confidence_maps(frames)["confmaps"]
    assert np.abs(maps - only_flipped).max() > 0.1 * np.abs(only_flipped).max()


@pytest.mark.parametrize("degrees", [100, 90, -5, float("nan")])
def test_predict_config_refuses_rotations_that_are_not_small(degrees):
    with pytest.raises(ValueError, match="rotation_tta"):
        PredictConfig(rotation_tta=degrees)
    assert PredictConfig(rotation_tta=0).rotation_tta == 0
