"""Prediction with a model package: frames, videos, Labels out, confidence maps, clusters."""

from __future__ import annotations

import threading
import warnings

import attrs
import numpy as np
import pytest
import sleap_io as sio
import torch

from napari_pose.cli import main
from napari_pose.core.io import load_labels, save_labels
from napari_pose.core.synthetic import make_synthetic, to_labels, write_video
from napari_pose.core.video import open_video
from napari_pose.nn.data import load_frames
from napari_pose.nn.inference import (
    DECODER_THREAD,
    INFERENCE_THREAD,
    PredictConfig,
    Predictor,
    predict_video,
    predictions_to_arrays,
)
from napari_pose.nn.inference import (
    to_labels as predictions_to_labels,
)
from napari_pose.nn.models import UNetConfig
from napari_pose.nn.pipelines import default_stages
from napari_pose.nn.scaleout import predict_one, predict_videos
from napari_pose.nn.train import TrainConfig, train
from napari_pose.nn.tta import FlipAveraged

TINY = UNetConfig(filters=8, filters_rate=1.5, max_stride=16, output_stride=2)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny single-animal model trained on 48 synthetic frames, and two unseen videos."""
    folder = tmp_path_factory.mktemp("inference")
    data = make_synthetic(n_frames=80, size=64, n_animals=1, seed=4)
    write_video(data.frames[:48], folder / "train.mp4")
    labels = to_labels(attrs.evolve(data, frames=data.frames[:48], points=data.points[:48],
                                    visible=data.visible[:48]), str(folder / "train.mp4"))  # fmt: skip
    stages = default_stages(load_frames(labels), "single_instance")
    stages = {
        k: attrs.evolve(s, model=attrs.evolve(s.model, backbone=TINY)) for k, s in stages.items()
    }
    config = TrainConfig(pipeline="single_instance", epochs=6, steps_per_epoch=40, batch_size=8,
                         learning_rate=3e-3)  # fmt: skip
    list(train(labels, folder / "model", config, stages=stages))
    write_video(data.frames[48:64], folder / "a.mp4")
    write_video(data.frames[64:80], folder / "b.mp4")
    return folder, data


def _errors(predictions, truth):
    """Per-node distances of single-instance predictions to the truth ``(n, k, 2)``."""
    points = np.stack([p.points[0] if len(p.scores) else np.full(truth.shape[1:], np.nan)
                       for p in predictions])  # fmt: skip
    return np.linalg.norm(points - truth, axis=-1)


def test_predictor_finds_the_animal_in_unseen_frames(trained):
    folder, data = trained
    predictor = Predictor.load(folder / "model", PredictConfig(batch_size=3, device="cpu"))
    predictions = predictor.predict(data.frames[48:64])
    assert len(predictions) == 16 and all(len(p.scores) == 1 for p in predictions)
    assert np.nanmedian(_errors(predictions, data.points[48:64, 0])) < 3.0
    assert all(0 < p.scores[0] <= 1.5 for p in predictions)


def test_flip_test_time_augmentation_averages_the_mirrored_frame(trained):
    """``flip_tta`` changes what the model says (it sees each frame mirrored too, left and
    right nodes swapped back by the package's flip pairs) and keeps the animal found."""
    folder, data = trained
    plain = Predictor.load(folder / "model", PredictConfig(device="cpu"))
    flipped = Predictor.load(folder / "model", PredictConfig(device="cpu", flip_tta=True))
    assert plain.package.config["flip_pairs"]  # the synthetic skeleton has a left/right pair
    assert all(isinstance(m, FlipAveraged) for m in flipped.package.models.values())
    before, after = plain.predict(data.frames[48:64]), flipped.predict(data.frames[48:64])
    assert not np.allclose(np.stack([p.points[0] for p in before]),
                           np.stack([p.points[0] for p in after]))  # fmt: skip
    assert np.nanmedian(_errors(after, data.points[48:64, 0])) < 3.0


def test_predictor_refuses_frames_with_the_wrong_channels(trained):
    folder, data = trained
    predictor = Predictor.load(folder / "model", PredictConfig(device="cpu"))
    rgb = np.repeat(data.frames[:2, ..., None], 3, axis=-1)
    with pytest.raises(ValueError, match="1-channel images"):
        predictor.predict(rgb)


def test_confidence_maps_peak_on_the_animal(trained):
    folder, data = trained
    predictor = Predictor.load(folder / "model", PredictConfig(device="cpu"))
    maps = predictor.confidence_maps(data.frames[50:52])["confmaps"]
    assert maps.shape == (2, 64, 64)
    y, x = np.unravel_index(maps[0].argmax(), maps[0].shape)
    assert np.linalg.norm(data.points[50, 0] - [x, y], axis=-1).min() < 3.0


def test_video_predictions_stream_in_order_and_save_as_slp(trained, tmp_path):
    folder, data = trained
    predictor = Predictor.load(folder / "model", PredictConfig(batch_size=4, device="cpu"))
    video = sio.Video(filename=str(folder / "a.mp4"))
    results = []
    with open_video(video) as reader:
        for indices, predictions in predict_video(predictor, reader, range(2, 13)):
            results += [(0, int(i), p) for i, p in zip(indices, predictions, strict=True)]
    assert [f for _, f, _ in results] == list(range(2, 13))
    save_labels(predictions_to_labels(predictions_to_arrays(predictor.skeleton, [video],
                                                            results)), tmp_path / "p.slp")  # fmt: skip
    labels = sio.load_slp(str(tmp_path / "p.slp"))
    assert [lf.frame_idx for lf in labels.labeled_frames] == list(range(2, 13))
    instance = labels.labeled_frames[0].instances[0]
    assert isinstance(instance, sio.PredictedInstance) and instance.score > 0
    np.testing.assert_allclose(instance.numpy(), results[0][2].points[0], atol=1e-4)


def test_closing_a_video_stream_early_stops_the_decoder(trained):
    folder, _ = trained
    predictor = Predictor.load(folder / "model", PredictConfig(batch_size=2, device="cpu"))
    with open_video(folder / "a.mp4") as reader:
        stream = predict_video(predictor, reader)
        next(stream)
        assert any(t.name == DECODER_THREAD for t in threading.enumerate())
        stream.close()  # must return, not hang on the decoder thread
    assert not any(t.name == DECODER_THREAD for t in threading.enumerate())


def _threads(prefix: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(prefix)]


def test_parallel_workers_predict_what_one_worker_does_in_order(trained):
    """Batches run in single-threaded workers at once, come back in order, equal a serial
    run (to float rounding), and the workers end with the stream."""
    folder, data = trained
    serial = Predictor.load(folder / "model", PredictConfig(batch_size=3, workers=1, device="cpu"))
    parallel = Predictor.load(
        folder / "model", PredictConfig(batch_size=3, workers=3, device="cpu")
    )
    assert parallel.workers == 3 and serial.workers == 1
    threads = torch.get_num_threads()
    expected = serial.predict(data.frames[48:64])
    seen = []
    with open_video(folder / "a.mp4") as reader:
        stream = predict_video(parallel, reader)
        for indices, predictions in stream:
            seen += list(zip(indices.tolist(), predictions, strict=True))
            # Up to 3 workers: the pool reuses an idle worker rather than starting another, so
            # on a busy machine (frames decode between submissions) fewer may be running.
            assert 1 <= len(_threads(INFERENCE_THREAD)) <= 3
    assert [f for f, _ in seen] == list(range(16))
    for (_, got), want in zip(seen, expected, strict=True):
        np.testing.assert_allclose(got.points, want.points, atol=1e-3)
        np.testing.assert_allclose(got.scores, want.scores, atol=1e-4)
    assert not _threads(INFERENCE_THREAD)
    assert torch.get_num_threads() == threads  # the one-thread limit stayed in the workers


def test_two_videos_on_a_local_cluster_equal_a_single_process_run(trained):
    folder, _ = trained
    config = PredictConfig(batch_size=4, device="cpu")
    videos = [sio.Video(filename=str(folder / "a.mp4")), sio.Video(filename=str(folder / "b.mp4"))]
    arrays = predict_videos(videos, folder / "model", config, workers=2)
    for v, video in enumerate(videos):
        alone = predict_one(video, folder / "model", config)
        rows = arrays.video == v
        np.testing.assert_array_equal(arrays.frame[rows], alone.frame)
        np.testing.assert_allclose(arrays.xy[rows], alone.xy, atol=1e-5)
    assert arrays.videos == videos and len(arrays) == 32


def test_predict_command(trained, tmp_path, capsys):
    folder, data = trained
    out = tmp_path / "pred.slp"
    assert main(["predict", str(folder / "a.mp4"), "-m", str(folder / "model"), "-o", str(out),
                 "--frames", "0-9", "--device", "cpu", "--quiet"]) == 0  # fmt: skip
    assert "wrote 10 predicted instances in 10 frames" in capsys.readouterr().out
    labels = load_labels(out)
    assert len(labels.labeled_frames) == 10 and labels.videos[0].filename.endswith("a.mp4")
    assert main(["predict", str(folder / "a.mp4"), "-m", str(tmp_path), "-o", str(out)]) == 2
    assert str(tmp_path) in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# Frames that are not there, or cannot be decoded
# --------------------------------------------------------------------------------------------


def _damaged_copy(video, out, frames: range):
    """``video`` with the packets of ``frames`` zeroed, as a bad disk or a cut copy leaves
    them: those frames cannot be decoded; later ones decode, wrong where they refer to them."""
    import av

    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        tick = round(1 / (stream.time_base * stream.average_rate))
        spans = [(p.pos, p.size) for p in container.demux(stream)
                 if p.pts is not None and frames.start * tick <= p.pts < frames.stop * tick]  # fmt: skip
    data = bytearray(video.read_bytes())
    for pos, size in spans:
        data[pos : pos + size] = bytes(size)
    out.write_bytes(bytes(data))
    return out


def test_undecodable_frames_are_skipped_and_reported(trained, tmp_path):
    from napari_pose.core.errors import PoseWarning

    folder, _ = trained
    damaged = _damaged_copy(folder / "a.mp4", tmp_path / "damaged.mp4", range(6, 9))
    predictor = Predictor.load(folder / "model", PredictConfig(batch_size=4, device="cpu"))
    with open_video(damaged) as reader, pytest.warns(PoseWarning) as caught:
        done = [int(i) for indices, _ in predict_video(predictor, reader) for i in indices]
    assert done == [*range(6), *range(9, 16)]
    assert [str(w.message) for w in caught] == [
        f"{damaged}: 3 of 16 frames could not be decoded and were skipped (frames 6-8; first: "
        "frame 6 cannot be decoded: its data is missing or corrupt); the other 13 were predicted"
    ]


def test_predict_command_keeps_what_it_could_decode(trained, tmp_path, capsys):
    folder, _ = trained
    damaged = _damaged_copy(folder / "a.mp4", tmp_path / "damaged.mp4", range(6, 9))
    out = tmp_path / "pred.slp"
    command = ["predict", str(damaged), "-m", str(folder / "model"), "-o", str(out),
               "--device", "cpu", "--quiet", "--peak-threshold", "-1"]  # fmt: skip
    assert main(command) == 0
    assert "warning: " in capsys.readouterr().err
    assert sorted(lf.frame_idx for lf in load_labels(out)) == [*range(6), *range(9, 16)]
    out.unlink()
    assert main([*command, "--frames", "6-8"]) == 2  # nothing to keep
    assert capsys.readouterr().err == (
        f"error: {damaged}: none of the 3 frames could be decoded (frame 6 cannot be decoded: "
        "its data is missing or corrupt)\n"
    )
    assert not out.exists()


def test_predict_command_on_frames_outside_the_video(trained, tmp_path, capsys):
    """None of the frames: an error naming the video and its length (this wrote an empty file
    and said nothing); some of them: a warning saying how many were cut."""
    folder, _ = trained
    video, out = folder / "a.mp4", tmp_path / "pred.slp"
    command = ["predict", str(video), "-m", str(folder / "model"), "-o", str(out),
               "--device", "cpu", "--quiet", "--peak-threshold", "-1"]  # fmt: skip
    assert main([*command, "--frames", "1000-1001"]) == 2
    assert capsys.readouterr().err == (
        f"error: {video}: has 16 frames (0-15); none of the frames asked for (1000-1001) is "
        "among them\n"
    )
    assert not out.exists()
    assert main([*command, "--frames", "10-29"]) == 0
    assert capsys.readouterr().err == (
        f"warning: {video}: 14 of the 20 frames asked for are not in the video (16 frames, "
        "0-15); predicting the other 6\n"
    )
    assert sorted(lf.frame_idx for lf in load_labels(out)) == list(range(10, 16))


def test_predict_command_checks_its_output_before_predicting(trained, tmp_path, capsys,
                                                             monkeypatch):  # fmt: skip
    import napari_pose.nn.scaleout

    def no_prediction(*args, **kwargs):
        raise AssertionError("predicted before checking the output")

    monkeypatch.setattr(napari_pose.nn.scaleout, "predict_one", no_prediction)
    folder, _ = trained
    out = tmp_path / "missing" / "pred.slp"
    assert main(["predict", str(folder / "a.mp4"), "-m", str(folder / "model"), "-o",
                 str(out), "--device", "cpu", "--quiet"]) == 2  # fmt: skip
    assert capsys.readouterr().err == (
        f"error: {out}: cannot be written: the folder {out.parent} does not exist\n"
    )


# --------------------------------------------------------------------------------------------
# Animals per frame: more than in training when asked, and frames that held more than the limit
# --------------------------------------------------------------------------------------------

#: Where the animals of each frame of ``_spot_frames`` are, ``(x, y)``: three, two, then one.
SPOTS = [[(12, 12), (44, 20), (28, 48)], [(12, 12), (44, 20)], [(28, 48)]]
#: The warning of a run of the spots package at its default limit (2) over ``SPOTS``.
CROWDED = (
    "1 of 3 frames held more than 2 animals (the model found up to 3) and only the best 2 of "
    "each were kept; if frames can hold more, raise the animals per frame: --animals N "
    "(napari-pose predict) or 'animals per frame' in the Predict dock"
)


class _SeesSpots(torch.nn.Module):
    """A hand-made perfect model of ``_spot_frames``: every head outputs the image, which is
    already a map with a Gaussian peak on each animal. It finds exactly the animals a frame
    holds, so the limit on animals per frame alone decides how many are kept."""

    output_stride = 1

    def __init__(self, heads: dict[str, int]) -> None:
        super().__init__()
        self.heads = heads
        self.gain = torch.nn.Parameter(torch.ones(()))  # ``Predictor`` finds the device by it

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: images[:, :1].expand(-1, n, -1, -1) * self.gain
                for name, n in self.heads.items()}  # fmt: skip


def _spot_frames() -> np.ndarray:
    """``SPOTS`` as frames: a Gaussian peak (sigma 2 px, 255 at its centre) on each animal."""
    from napari_pose.nn.targets import confidence_maps

    points = torch.full((len(SPOTS), 3, 1, 2), torch.nan)
    for f, spots in enumerate(SPOTS):
        points[f, : len(spots), 0] = torch.tensor(spots, dtype=torch.float32)
    return (confidence_maps(points, (64, 64), 1, 2.0)[:, 0] * 255).round().byte().numpy()


def _stage(kind: str, heads: dict[str, int], side: int):
    from napari_pose.nn.models import ModelConfig
    from napari_pose.nn.pipelines import StageConfig

    backbone = UNetConfig(max_stride=16, output_stride=1)
    return StageConfig(kind=kind, model=ModelConfig(backbone, heads), input_size=(side, side))


def _spot_predictor(config: PredictConfig | None = None) -> Predictor:
    """A top-down package of ``_SeesSpots`` models whose training labels held at most 2
    animals a frame."""
    from pathlib import Path

    from napari_pose.nn.package import ModelPackage

    stages = {"centroid": _stage("centroid", {"centroids": 1}, 64),
              "centered_instance": _stage("centered_instance", {"confmaps": 2}, 32)}  # fmt: skip
    models = {kind: _SeesSpots(stage.model.heads) for kind, stage in stages.items()}
    package = ModelPackage(Path("spots"), "topdown", stages, models,
                           sio.Skeleton(["head", "tail"]), max_instances=2, config={})  # fmt: skip
    return Predictor(package, config or PredictConfig(device="cpu"))


def test_more_animals_than_in_training_are_found_when_asked():
    """The most animals a training frame held (2) is the default limit; ``max_instances``
    raises it for a video whose frames hold more."""
    frames = _spot_frames()
    default = _spot_predictor().predict(frames)
    asked = _spot_predictor(PredictConfig(max_instances=3, device="cpu")).predict(frames)
    assert [len(p.scores) for p in default] == [2, 2, 1]
    assert [len(p.scores) for p in asked] == [3, 2, 1]
    assert [p.n_candidates for p in default] == [p.n_candidates for p in asked] == [3, 2, 1]
    found = {tuple(xy) for xy in np.round(asked[0].points[:, 0]).astype(int).tolist()}
    assert found == set(SPOTS[0])


def test_frames_that_held_more_animals_than_the_limit_are_reported_once():
    from napari_pose.core.errors import PoseWarning

    frames = _spot_frames()
    predictor = _spot_predictor(PredictConfig(batch_size=1, device="cpu"))
    with pytest.warns(PoseWarning) as caught:
        assert len(list(predict_video(predictor, frames))) == 3  # batches of one frame
    assert [str(w.message) for w in caught] == [CROWDED]
    raised = _spot_predictor(PredictConfig(batch_size=1, max_instances=3, device="cpu"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", PoseWarning)
        list(predict_video(raised, frames))


def test_bottomup_counts_the_animals_it_grouped_beyond_the_limit():
    from napari_pose.nn.predict import predict_bottomup
    from napari_pose.nn.targets import confidence_maps, part_affinity_fields

    class Draws(_SeesSpots):
        """Three two-node animals, drawn as a perfect bottom-up model would draw them."""

        def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"confmaps": confidence_maps(points, (64, 64), 1, 2.0),
                    "pafs": part_affinity_fields(points, edges, (64, 64), 1, 2.0)}  # fmt: skip

    points = torch.tensor([[[[12.0, 12.0], [12.0, 24.0]], [[44.0, 12.0], [44.0, 24.0]],
                            [[28.0, 40.0], [28.0, 52.0]]]])  # fmt: skip
    edges = torch.tensor([[0, 1]])
    stage = _stage("bottomup", {"confmaps": 2, "pafs": 1}, 64)
    (found,) = predict_bottomup(Draws(stage.model.heads), stage, torch.zeros(1, 1, 64, 64),
                                edges.numpy(), max_instances=2)  # fmt: skip
    assert len(found.scores) == 2 and found.n_candidates == 3


def test_videos_of_a_cluster_run_add_up_to_one_report(tmp_path, monkeypatch):
    """A cluster worker (``_predict_reporting``) sends its video's count back rather than a
    warning of its own: the client adds them up and warns once for the whole run."""
    import tifffile

    from napari_pose.core.errors import PoseWarning
    from napari_pose.nn import scaleout

    monkeypatch.setattr(Predictor, "load", classmethod(
        lambda cls, folder, config=None: _spot_predictor(config)))  # fmt: skip
    counts = []
    with warnings.catch_warnings():
        warnings.simplefilter("error", PoseWarning)
        for name in ("a.tif", "b.tif"):
            tifffile.imwrite(tmp_path / name, _spot_frames(), photometric="minisblack")
            arrays, messages, crowding = scaleout._predict_reporting(
                str(tmp_path / name), "spots", PredictConfig(device="cpu")
            )
            assert len(arrays) == 5 and messages == []
            counts.append(crowding)
    counts[0].add(counts[1])
    with pytest.warns(PoseWarning) as caught:
        counts[0].warn()
    assert [str(w.message) for w in caught] == [CROWDED.replace("1 of 3", "2 of 6")]
