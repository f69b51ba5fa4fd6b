"""``anydistill.eval.evaluate`` without training: the promptable evaluation of an official-format tiny SAM
``.pth`` (toyworld, a folder with ``instances/``, a COCO JSON), compared with the interactive protocol run
by hand on a dataset built by hand; the dense evaluation's dataset; the metrics JSON and table."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sam_upstream import tiny_upstream_sam

from anydistill.data.instances import CocoInstances, FolderInstances, InstanceDataset, ToyWorldInstances
from anydistill.data.toyworld import ToyWorldDataset, write_toyworld
from anydistill.data.transforms import eval_transforms
from anydistill.errors import ConfigError, DataError
from anydistill.eval import evaluate as evaluate_module
from anydistill.eval.evaluate import (
    _check_not_empty,
    check_at_least,
    eval_dataset,
    evaluate_promptable,
    format_table,
    promptable_eval_dataset,
    write_metrics_json,
)
from anydistill.eval.interactive import evaluate_interactive
from anydistill.loading import load_model

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = 64  # the tiny SAM's input size
HELD_OUT = 10_000  # evaluate's toyworld scenes are the held-out seeds: seed + 10000


@pytest.fixture(scope="module")
def sam_pth(tmp_path_factory) -> Path:
    """segment_anything's tiny random Sam saved as an official ``.pth`` (a plain state dict)."""
    path = tmp_path_factory.mktemp("sam") / "sam_tiny.pth"
    torch.save(tiny_upstream_sam(0, img_size=SIZE, decoder_heads=8).state_dict(), path)
    return path


def _by_hand(pth: Path, source, max_clicks: int, frame: str, seed: int = 0, max_instances: int = 16) -> dict:
    """The interactive protocol on ``InstanceDataset(source)`` built here, plus the image count."""
    dataset = InstanceDataset(
        source, SIZE, max_instances, 64, sampling="fixed", seed=seed, original_masks=frame == "original"
    )
    metrics = evaluate_interactive(load_model(pth).model, dataset, max_clicks=max_clicks, frame=frame)
    return {**metrics, "images": float(len(dataset))}


def _scene(height: int, width: int, boxes: list[tuple[int, int, int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """An image with bright boxes (y0, x0, y1, x1) on a dark ground and its instance-id map (1, 2, ...)."""
    id_map = np.zeros((height, width), dtype=np.int32)
    for k, (y0, x0, y1, x1) in enumerate(boxes, start=1):
        id_map[y0:y1, x0:x1] = k
    image = (
        np.where(id_map[..., None] > 0, 40 + 50 * id_map[..., None], 20).astype(np.uint8).repeat(3, axis=2)
    )
    return image, id_map


# Source 40 x 90 (input 28 x 64): a 12 x 24 box, an 8 x 8 box (area 64 = min_area: kept) and a 7 x 9 one
# (63: left out); the second scene 50 x 30 (input 64 x 38).
SCENES = {
    "a": _scene(40, 90, [(4, 6, 16, 30), (25, 50, 33, 58), (22, 70, 29, 79)]),
    "b": _scene(50, 30, [(5, 3, 30, 20), (35, 10, 45, 28)]),
}


@pytest.fixture(scope="module")
def instance_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("folder")
    (root / "images").mkdir()
    (root / "instances").mkdir()
    for name, (image, id_map) in SCENES.items():
        Image.fromarray(image).save(root / "images" / f"{name}.png")
        Image.fromarray(id_map.astype(np.uint16)).save(root / "instances" / f"{name}.png")
    return root


def _coco(path: Path, image_names: dict[str, str]) -> Path:
    """A COCO JSON of ``SCENES`` (box polygons), the images named ``image_names[scene]``."""
    images, annotations = [], []
    for i, (name, (image, id_map)) in enumerate(SCENES.items(), start=1):
        images.append(
            {"id": i, "file_name": image_names[name], "height": image.shape[0], "width": image.shape[1]}
        )
        for k in range(1, int(id_map.max()) + 1):
            ys, xs = np.nonzero(id_map == k)
            y0, x0, y1, x1 = int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1
            polygon = [x0, y0, x1, y0, x1, y1, x0, y1]
            annotations.append({"id": 10 * i + k, "image_id": i, "segmentation": [polygon], "iscrowd": 0})
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": []}))
    return path


def test_evaluate_promptable_on_toyworld_is_the_interactive_protocol(sam_pth, tmp_path) -> None:
    """Held-out toyworld scenes (seed + 10000), a fixed choice of objects seeded by ``seed``, the model's
    input size; the metrics are evaluate_interactive's on that dataset, plus the image count; the JSON
    holds the checkpoint, the data and exactly the returned metrics."""
    out = tmp_path / "eval" / "metrics.json"
    metrics = evaluate_promptable(
        sam_pth,
        "toyworld:narrow",
        count=3,
        max_clicks=2,
        max_instances=2,
        seed=1,
        out_json=out,
        progress=False,
    )
    expected = _by_hand(
        sam_pth,
        ToyWorldInstances("narrow", SIZE, 3, seed=1 + HELD_OUT),
        2,
        "original",
        seed=1,
        max_instances=2,
    )
    assert metrics == pytest.approx(expected, abs=1e-6)
    assert set(metrics) == {"num_objects", "miou@1", "miou@2", "noc@85", "noc@90", "nof@85", "nof@90",
                            "oracle_miou@1", "images"}  # fmt: skip
    # 2 + 1 + 2: at most two objects of each scene
    assert metrics["images"] == 3.0 and metrics["num_objects"] == 5.0
    assert all(type(v) is float for v in metrics.values())
    assert json.loads(out.read_text()) == {
        "checkpoint": str(sam_pth),
        "data": "toyworld:narrow",
        "metrics": metrics,
    }
    # another seed: other scenes (and another choice of objects)
    other = evaluate_promptable(
        sam_pth, "toyworld:narrow", count=3, max_clicks=2, max_instances=2, seed=2, progress=False
    )
    assert other != pytest.approx(metrics, abs=1e-6)


def test_evaluate_promptable_smallest_settings_and_default_domain(sam_pth) -> None:
    """count = max_clicks = max_instances = 1 are accepted; ``toyworld`` alone is ``toyworld:wide``."""
    metrics = evaluate_promptable(sam_pth, "toyworld", count=1, max_clicks=1, max_instances=1, progress=False)
    expected = _by_hand(
        sam_pth, ToyWorldInstances("wide", SIZE, 1, seed=HELD_OUT), 1, "original", max_instances=1
    )
    assert metrics == pytest.approx(expected, abs=1e-6)
    assert metrics["images"] == 1.0 and metrics["num_objects"] == 1.0 and "miou@2" not in metrics


def test_evaluate_promptable_on_a_folder_in_both_frames(sam_pth, instance_folder) -> None:
    """Non-square sources: ``frame="original"`` measures on the source masks, ``"input"`` in the model's
    resized frame, each equal to evaluate_interactive in that frame; objects of exactly ``min_area`` =
    64 pixels count, smaller ones do not."""
    original = evaluate_promptable(sam_pth, str(instance_folder), count=1, max_clicks=3, progress=False)
    resized = evaluate_promptable(
        sam_pth, str(instance_folder), count=1, max_clicks=3, progress=False, frame="input"
    )
    source = FolderInstances(instance_folder)
    assert original == pytest.approx(_by_hand(sam_pth, source, 3, "original"), abs=1e-6)
    assert resized == pytest.approx(_by_hand(sam_pth, source, 3, "input"), abs=1e-6)
    assert original["num_objects"] == resized["num_objects"] == 4.0  # 2 + 2: the 7 x 9 box is below 64
    assert original["images"] == 2.0
    assert original != pytest.approx(resized, abs=1e-6)  # the frames give other clicks and IoUs


@pytest.mark.parametrize("layout", ["images_beside", "next_to_json"])
def test_evaluate_promptable_on_a_coco_json(sam_pth, tmp_path, layout) -> None:
    """The images of a COCO JSON are under ``images/`` beside it when that folder exists, else next to it."""
    folder = tmp_path / "images" if layout == "images_beside" else tmp_path
    folder.mkdir(exist_ok=True)
    names = {name: f"{name}.png" for name in SCENES}
    for name, (image, _) in SCENES.items():
        Image.fromarray(image).save(folder / names[name])
    ann = _coco(tmp_path / "instances.json", names)
    metrics = evaluate_promptable(sam_pth, str(ann), count=1, max_clicks=2, progress=False)
    assert metrics == pytest.approx(_by_hand(sam_pth, CocoInstances(ann, folder), 2, "original"), abs=1e-6)
    assert metrics["images"] == 2.0 and metrics["num_objects"] == 4.0


def test_evaluate_promptable_refusals(sam_pth, depth_ckpt, tmp_path) -> None:
    with pytest.raises(DataError, match="not a promptable") as err:
        evaluate_promptable(depth_ckpt, "toyworld:wide", count=1, max_clicks=1, progress=False)
    assert str(depth_ckpt) in str(err.value) and "'depth'" in str(err.value)
    with pytest.raises(DataError, match="not found") as err:
        evaluate_promptable(sam_pth, str(tmp_path / "absent"), count=1, max_clicks=1, progress=False)
    assert str(tmp_path / "absent") in str(err.value)
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    with pytest.raises(DataError, match="no images to evaluate") as err:
        evaluate_promptable(sam_pth, str(empty), count=1, max_clicks=1, progress=False)
    assert str(empty) in str(err.value)
    with pytest.raises(ConfigError, match="^frame: "):
        evaluate_promptable(sam_pth, frame="resized", progress=False)
    with pytest.raises(ConfigError, match="cuda:99"):  # refused, not evaluated on the CPU instead
        evaluate_promptable(sam_pth, count=1, max_clicks=1, device="cuda:99", progress=False)


def test_evaluate_promptable_defaults_and_progress_bar(sam_pth, monkeypatch, capsys) -> None:
    """The defaults (64 held-out toyworld:wide scenes, 20 clicks, 16 objects, seed 0, the source frame,
    on the CPU, with a progress bar), with the dataset and the protocol replaced by spies."""
    seen: dict = {}
    real_dataset = evaluate_module.promptable_eval_dataset

    def dataset_spy(data, image_size, count, seed, max_instances, **kwargs):
        seen["dataset"] = (data, image_size, count, seed, max_instances, kwargs)
        return real_dataset(data, image_size, 2, seed, max_instances, **kwargs)  # 2 scenes, not 64

    def protocol_spy(model, samples, **kwargs):
        seen["protocol"] = (next(model.parameters()).device, kwargs)
        return {"miou@1": torch.tensor(0.25), "n": len(list(samples))}

    monkeypatch.setattr(evaluate_module, "promptable_eval_dataset", dataset_spy)
    monkeypatch.setattr(evaluate_module, "evaluate_interactive", protocol_spy)
    assert evaluate_promptable(sam_pth) == {"miou@1": 0.25, "n": 2.0, "images": 2.0}
    assert seen["dataset"] == ("toyworld:wide", SIZE, 64, 0, 16, {"original_masks": True})
    assert seen["protocol"] == (torch.device("cpu"), {"max_clicks": 20, "frame": "original"})
    err = capsys.readouterr().err
    # the progress bar, one step per image
    assert (
        re.match(r"evaluate: +100%", err.split("\r")[-1])
        and "2/2" in err
        and re.search(r"image/s|s/image", err)
    )
    evaluate_promptable(sam_pth, frame="input", progress=False)
    assert seen["dataset"][-1] == {"original_masks": False} and seen["protocol"][1]["frame"] == "input"
    assert capsys.readouterr().err == ""


def test_promptable_eval_dataset_defaults(tmp_path) -> None:
    """A fixed choice (seed 0) of at most 16 objects of at least 64 pixels, with the source-frame masks."""
    dataset = promptable_eval_dataset("toyworld:narrow", 32, 2)
    assert isinstance(dataset, InstanceDataset) and len(dataset) == 2
    assert (dataset.size, dataset.max_instances, dataset.min_area, dataset.seed) == (32, 16, 64, 0)
    assert dataset.sampling == "fixed" and dataset.original_masks is True
    assert isinstance(dataset.source, ToyWorldInstances) and dataset.source.dataset.domain == "narrow"
    assert dataset.source.dataset.seed == HELD_OUT
    first = dataset[0]
    assert torch.equal(first["masks"], dataset[0]["masks"])  # the same objects every time
    assert first["image"].shape == (3, 32, 32) and "original_masks" in first
    resized = promptable_eval_dataset(
        "toyworld", 32, 1, seed=3, max_instances=2, min_area=10, original_masks=False
    )
    assert (resized.max_instances, resized.min_area, resized.seed, resized.original_masks) == (
        2,
        10,
        3,
        False,
    )
    assert resized.source.dataset.domain == "wide" and resized.source.dataset.seed == 3 + HELD_OUT
    assert "original_masks" not in resized[0]


def test_eval_dataset_toyworld_and_folder(tmp_path) -> None:
    """Held-out toyworld scenes of the named domain (``wide`` by default), or a user folder, both through
    the evaluation transforms (long side to ``image_size``, padded square)."""
    transform = eval_transforms(32, 8)
    dataset = eval_dataset("toyworld:indoor", "depth", 32, 8, 3, 2)
    assert len(dataset) == 3 and dataset.domain == "indoor"
    reference = ToyWorldDataset("indoor", 32, 3, seed=2 + HELD_OUT, transform=transform)
    for i in (0, 2):
        assert torch.equal(dataset[i]["image"], reference[i]["image"])
        assert torch.equal(dataset[i]["depth"], reference[i]["depth"])
    assert eval_dataset("toyworld", "depth", 32, 8, 1, 0).domain == "wide"
    write_toyworld(tmp_path / "tw", count=2, size=40, domain="wide", seed=3, progress=False)
    folder = eval_dataset(str(tmp_path / "tw"), "semantic", 32, 8, 1, 0)
    assert len(folder) == 2  # a folder: all its images (count is for toyworld)
    item = folder[0]
    assert item["image"].shape == (3, 32, 32) and item["semantic"].shape == (32, 32)  # resized from 40
    assert item["orig_size"] == (40, 40) and "depth" not in item
    with pytest.raises(DataError, match="evaluation data not found") as err:
        eval_dataset(str(tmp_path / "absent"), "depth", 32, 8, 1, 0)
    assert str(tmp_path / "absent") in str(err.value)


def test_check_at_least_and_not_empty() -> None:
    check_at_least(1, count=1, size=None, batch_size=7)
    check_at_least(0, seed=0)
    for value in (0, -3, True, 2.0, 1.5, "3"):
        with pytest.raises(ConfigError) as err:
            check_at_least(1, count=4, batch_size=value)
        assert str(err.value) == f"batch_size: must be an integer >= 1, got {value!r}"
    _check_not_empty([{"image": 0}], "one.png")  # one image is enough
    with pytest.raises(DataError, match="no images to evaluate") as err:
        _check_not_empty([], "some/folder")
    assert "some/folder" in str(err.value)


def test_write_metrics_json_content_and_atomic_replace(tmp_path, monkeypatch) -> None:
    out = tmp_path / "new" / "deeper" / "m.json"
    metrics = {"abs_rel": 0.125, "images": 2.0}
    moves: list[tuple[str, str]] = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (moves.append((str(a), str(b))), real_replace(a, b)))
    write_metrics_json(out, Path("runs/best.ckpt"), "toyworld:wide", metrics)
    expected = {"checkpoint": "runs/best.ckpt", "data": "toyworld:wide", "metrics": metrics}
    assert out.read_text() == json.dumps(expected, indent=2)  # indented for people to read
    assert moves == [(str(out) + ".tmp", str(out))]  # written beside it, then moved into place
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.json"]
    write_metrics_json(str(out), "other.pth", "data/folder", {"x": 1.0})  # replaces the old file
    assert json.loads(out.read_text()) == {
        "checkpoint": "other.pth",
        "data": "data/folder",
        "metrics": {"x": 1.0},
    }


def test_write_metrics_json_errors_name_the_file_and_leave_no_temporary(tmp_path, monkeypatch) -> None:
    target = tmp_path / "taken.json"
    target.mkdir()  # the move onto a folder fails
    with pytest.raises(DataError, match="cannot write the metrics") as err:
        write_metrics_json(target, "c", "d", {"x": 1.0})
    assert str(target) in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.json"]  # the temporary file is removed
    blocked = tmp_path / "file"
    blocked.write_text("")
    with pytest.raises(DataError) as err:
        write_metrics_json(blocked / "m.json", "c", "d", {})
    assert str(blocked) in str(err.value)

    def disk_full(self, text, *args, **kwargs):
        if "partial" in self.parent.name:
            with open(self, "w") as f:
                f.write(text[:5])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", disk_full)
    for name in ("partial", "nothing"):  # the temporary file half written, or never created
        (tmp_path / name).mkdir()
        with pytest.raises(DataError, match="No space left on device") as err:
            write_metrics_json(tmp_path / name / "m.json", "c", "d", {})
        assert str(tmp_path / name / "m.json") in str(err.value)
        assert list((tmp_path / name).iterdir()) == []


def test_format_table() -> None:
    table = format_table({"miou@1": 0.5, "noc@85": 2.25, "images": 3.0})
    assert table == (
        "| metric | value |\n|---|---|\n| miou@1 | 0.5000 |\n| noc@85 | 2.2500 |\n| images | 3.0000 |"
    )
    assert format_table({}) == "| metric | value |\n|---|---|"


def test_metrics_json_beside_a_directory_of_its_temporary_name_is_one_line(tmp_path) -> None:
    from anydistill.errors import DataError
    from anydistill.eval.evaluate import write_metrics_json

    (tmp_path / "m.json.tmp").mkdir()
    with pytest.raises(DataError, match="cannot write the metrics"):
        write_metrics_json(tmp_path / "m.json", "c", "d", {})
    assert (tmp_path / "m.json.tmp").is_dir()  # the user's directory is left alone


@pytest.mark.parametrize("task", ["depth", "semantic"])
def test_dense_evaluate_runs_channels_last_with_the_nchw_figures(task, tmp_path, monkeypatch) -> None:
    """``evaluate`` gives convolutional students channels-last inputs (faster on CPU, issue 11 item 5) and
    the same metrics as the plain NCHW loop written out here, to float rounding."""
    from tiny_students import save_tiny_depth_student, save_tiny_semantic_student

    from anydistill.eval.metrics import DepthMetrics, SegmentationMetrics
    from anydistill.inference import load_student

    save = save_tiny_depth_student if task == "depth" else save_tiny_semantic_student
    ckpt = save(tmp_path / "student.ckpt")
    got = evaluate_module.evaluate(ckpt, "toyworld:wide", count=6, batch_size=4, progress=False)

    student = load_student(ckpt)
    spec = student.preprocess.with_size(student.image_size)
    dataset = eval_dataset("toyworld:wide", task, spec.size, spec.multiple, 6, 0)
    metric = (
        DepthMetrics() if task == "depth" else SegmentationMetrics(num_classes=student.classes.num_classes)
    )
    with torch.inference_mode():
        for i in range(0, 6, 4):
            batch = [dataset[j] for j in range(i, min(i + 4, 6))]
            x = torch.stack([s["image"] for s in batch])
            pred = student.model(spec.normalize(x))
            if task == "depth":
                metric.update(pred, torch.stack([s["depth"] for s in batch]),
                              torch.stack([s["depth_valid"] for s in batch]))  # fmt: skip
            else:
                metric.update(pred.argmax(1), torch.stack([s["semantic"] for s in batch]))
    want = {k: float(v) for k, v in metric.compute().items() if torch.as_tensor(v).numel() == 1}
    assert want and all(got[k] == pytest.approx(v, abs=1e-5) for k, v in want.items())

    formats: list[bool] = []
    real = evaluate_module.load_student

    def spy(*args, **kwargs):
        loaded = real(*args, **kwargs)
        loaded.model.register_forward_pre_hook(
            lambda _m, inputs: formats.append(inputs[0].is_contiguous(memory_format=torch.channels_last))
        )
        return loaded

    monkeypatch.setattr(evaluate_module, "load_student", spy)
    evaluate_module.evaluate(ckpt, "toyworld:wide", count=2, batch_size=2, progress=False)
    assert formats == [True]
