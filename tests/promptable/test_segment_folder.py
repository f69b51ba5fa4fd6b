"""``segment --images DIR``: batched prompts (JSON or COCO) and batched automatic masks over a folder.

The model is segment-anything's tiny random ``Sam`` (tests/sam_upstream.py) with its mask
hypernetworks scaled up so masks depend on the prompt, saved as an official ``.pth`` and loaded as ours.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sam_upstream import tiny_upstream_sam

coco_mask = pytest.importorskip("pycocotools.mask")
from pycocotools.coco import COCO  # noqa: E402

from anydistill.cli import main  # noqa: E402
from anydistill.promptable import SamPredictor  # noqa: E402
from anydistill.promptable.amg import AutomaticMaskGenerator  # noqa: E402
from anydistill.promptable.loading import load_promptable  # noqa: E402
from anydistill.promptable.segment_folder import RESULTS_NAME, segment_folder  # noqa: E402

SIZES = {"a.png": (60, 90), "sub/b.png": (150, 110), "c.jpg": (64, 64)}  # (H, W); b is above the 128 frame

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def sam_pth(tmp_path_factory) -> Path:
    up = tiny_upstream_sam(0, img_size=128, width=32, decoder_heads=8, decoder_depth=2, iou_head_depth=3,
                           iou_head_hidden_dim=32)  # fmt: skip
    with torch.no_grad():
        for name, p in up.mask_decoder.named_parameters():
            if "output_hypernetworks" in name or "output_upscaling" in name:
                p.mul_(8.0)  # masks that depend on the prompt
    path = tmp_path_factory.mktemp("sam") / "sam.pth"
    torch.save(up.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def model(sam_pth: Path) -> torch.nn.Module:
    return load_promptable(sam_pth)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for name, (h, w) in SIZES.items():
        im = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
        im[h // 4 : h // 2, w // 5 : w // 2] = (200, 40, 40)
        im[h // 2 :, w // 2 :] = (30, 190, 60)
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(im).save(root / name, quality=95)
    return root


def _read(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _decode(ann: dict) -> np.ndarray:
    rle = {"size": ann["segmentation"]["size"], "counts": ann["segmentation"]["counts"].encode()}
    return coco_mask.decode(rle).astype(bool)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return 1.0 if union == 0 else float((a & b).sum() / union)


PROMPTS = {
    "a.png": {"points": [[20, 20], [60, 40, 1], [89, 59]], "boxes": [[10, 10, 40, 30], [0, 0, 90, 60]]},
    "sub/b.png": [
        {"points": [[30, 50, 1], [90, 120, 0]]},
        {"points": [[80, 100, 1], [20, 20, 0], [100, 10, 0]]},
        {"box": [5, 5, 100, 140], "category_id": 2},
        {"points": [[50, 60, 1]], "box": [20, 30, 90, 100]},
        {"points": [[10, 140, 1]]},
    ],
    "c.jpg": {"boxes": [[1, 2, 30, 40]]},
}


def _write(path: Path, data) -> Path:
    path.write_text(json.dumps(data))
    return path


# ---------------------------------------------------------------------------------------------- parity


def test_batched_prompts_match_each_image_alone(sam_pth, model, folder, tmp_path) -> None:
    """Encoder over 3 images at once, decoder over each image's prompts at once == SamPredictor per prompt."""
    prompts = _write(tmp_path / "prompts.json", PROMPTS)
    report = segment_folder(sam_pth, folder, tmp_path / "out", prompts=prompts, batch_size=3, progress=False)
    data = json.loads(report.results.read_text())
    assert report.images == 3 and report.masks == len(data["annotations"]) == 5 + 5 + 1
    names = {im["id"]: im["file_name"] for im in data["images"]}
    predictor = SamPredictor(model)
    partial = 0
    for name in SIZES:
        image = _read(folder / name)
        predictor.set_image(image)
        anns = [a for a in data["annotations"] if names[a["image_id"]] == name]
        for ann in anns:
            p = ann["prompt"]
            pts = np.array([q[:2] for q in p.get("points", [])]) if "points" in p else None
            labels = np.array([q[2] for q in p["points"]]) if "points" in p else None
            box = np.array(p["box"]) if "box" in p else None
            single = pts is not None and len(pts) == 1 and box is None
            masks, iou, _ = predictor.predict(pts, labels, box, multimask_output=single)
            best = int(np.argmax(iou))
            mask = _decode(ann)
            assert mask.shape == image.shape[:2]
            assert _iou(mask, masks[best]) > 0.99, (name, p)
            assert ann["score"] == pytest.approx(float(iou[best]), abs=1e-4)
            partial += 0.02 < mask.mean() < 0.98
    assert partial >= 3, "the comparison should involve masks that are not empty or full"
    assert {a["category_id"] for a in data["annotations"]} == {1, 2}
    assert sorted(c["id"] for c in data["categories"]) == [1, 2]


@pytest.fixture(scope="module")
def auto_model() -> torch.nn.Module:
    """test_amg.py's tiny Sam: sharp, point-dependent masks, predicted IoUs ~0.7-1.0 (many masks pass)."""
    from segment_anything.modeling import Sam
    from test_amg import tiny_sam_parts  # tests/promptable is on sys.path (no __init__.py), as for test_amg

    return Sam(*tiny_sam_parts()).eval()


@pytest.mark.parametrize("settings", [{}, {"crop_n_layers": 1}], ids=["whole", "crops"])
def test_auto_batched_encoder_matches_one_at_a_time(auto_model, folder, settings) -> None:
    images = [_read(folder / name) for name in SIZES]
    gen = AutomaticMaskGenerator(auto_model, points_per_side=6, pred_iou_thresh=0.8, stability_score_thresh=0.5,
                                 **settings)  # fmt: skip
    batched = gen.generate_batch(images, batch_size=3)
    alone = [gen.generate(im) for im in images]
    assert sum(len(r) for r in alone) > 3
    for one, many in zip(alone, batched, strict=True):
        assert len(one) == len(many)
        for a, b in zip(one, many, strict=True):
            assert _iou(a["segmentation"], b["segmentation"]) > 0.99
            assert a["predicted_iou"] == pytest.approx(b["predicted_iou"], abs=1e-4)


# ---------------------------------------------------------------------------------------------- COCO


def _coco(folder: Path) -> dict:
    images = [
        {"id": 42, "file_name": "a.png", "height": 60, "width": 90},
        {"id": 7, "file_name": "sub/b.png", "height": 150, "width": 110},
        {"id": 9, "file_name": "c.jpg", "height": 64, "width": 64},  # no annotations: no masks
    ]
    anns = [
        {"id": 100, "image_id": 42, "category_id": 3, "bbox": [10, 10, 30, 20], "area": 600, "iscrowd": 0},
        {
            "id": 101,
            "image_id": 7,
            "category_id": 5,
            "bbox": [5.5, 5, 100, 145.4],
            "area": 9000,
            "iscrowd": 0,
        },
        {"id": 102, "image_id": 7, "category_id": 3, "bbox": [60, 80, 40, 50], "area": 2000, "iscrowd": 0},
    ]
    cats = [{"id": 3, "name": "ant"}, {"id": 5, "name": "bee"}]
    return {"images": images, "annotations": anns, "categories": cats}


@pytest.mark.parametrize("mode", ["box", "point", "both"])
def test_coco_input_carries_ids_over(sam_pth, folder, tmp_path, mode) -> None:
    gt_path = _write(tmp_path / "gt.json", _coco(folder))
    report = segment_folder(
        sam_pth, folder, tmp_path / "out", prompts=gt_path, coco_prompt=mode, progress=False
    )
    data = json.loads(report.results.read_text())
    assert sorted((im["id"], im["file_name"]) for im in data["images"]) == [(7, "sub/b.png"), (9, "c.jpg"),
                                                                             (42, "a.png")]  # fmt: skip
    assert data["categories"] == _coco(folder)["categories"]
    got = sorted((a["prompt_id"], a["image_id"], a["category_id"]) for a in data["annotations"])
    assert got == [(100, 42, 3), (101, 7, 5), (102, 7, 3)]
    first = next(a for a in data["annotations"] if a["prompt_id"] == 100)
    expect = {"box": {"box"}, "point": {"points"}, "both": {"box", "points"}}[mode]
    assert set(first["prompt"]) == expect
    if "points" in expect:
        assert first["prompt"]["points"] == [[25.0, 20.0, 1]]  # the bbox centre, a positive click
    if "box" in expect:
        assert first["prompt"]["box"] == [10.0, 10.0, 40.0, 30.0]  # XYWH → XYXY
    # The results load as COCO results against the ground truth.
    gt = COCO(str(gt_path))
    res = gt.loadRes(data["annotations"])
    assert len(res.anns) == 3
    # A bbox past the edge by < 1 px (101: y + h = 150.4) is clipped to the image.
    clipped = next(a for a in data["annotations"] if a["prompt_id"] == 101)
    if mode != "point":
        assert clipped["prompt"]["box"] == [5.5, 5.0, 105.5, 150.0]


def test_output_loads_with_pycocotools(sam_pth, folder, tmp_path) -> None:
    prompts = _write(tmp_path / "prompts.json", PROMPTS)
    report = segment_folder(sam_pth, folder, tmp_path / "out", prompts=prompts, batch_size=2, progress=False)
    coco = COCO(str(report.results))
    assert len(coco.imgs) == 3 and len(coco.anns) == 11
    for ann in coco.anns.values():
        img = coco.imgs[ann["image_id"]]
        assert (img["height"], img["width"]) == SIZES[img["file_name"]]
        mask = coco.annToMask(ann)
        assert mask.shape == SIZES[img["file_name"]]
        assert int(mask.sum()) == ann["area"]
        rle = coco.annToRLE(ann)
        assert ann["bbox"] == pytest.approx(coco_mask.toBbox(rle).tolist())
        assert ann["score"] == ann["predicted_iou"] and ann["iscrowd"] == 0  # random weights: any float
    info = json.loads(report.results.read_text())["anydistill"]
    assert info["complete"] is True and info["settings"]["mode"] == "prompts"


# ---------------------------------------------------------------------------------------------- resume


def test_interrupted_run_leaves_a_whole_file_and_resumes(sam_pth, folder, tmp_path, monkeypatch) -> None:
    from anydistill.promptable import segment_folder as module

    prompts = _write(tmp_path / "prompts.json", PROMPTS)
    calls = {"n": 0}
    real = module.decode_image_prompts

    def stop_on_second(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "decode_image_prompts", stop_on_second)
    with pytest.raises(KeyboardInterrupt):
        segment_folder(sam_pth, folder, tmp_path / "out", prompts=prompts, batch_size=1, progress=False)
    partial = json.loads((tmp_path / "out" / RESULTS_NAME).read_text())  # whole JSON, not torn
    assert partial["anydistill"]["complete"] is False and len(partial["images"]) == 1
    assert [p.name for p in (tmp_path / "out").iterdir()] == [RESULTS_NAME]  # no temporary left
    monkeypatch.setattr(module, "decode_image_prompts", real)
    report = segment_folder(sam_pth, folder, tmp_path / "out", prompts=prompts, batch_size=1, progress=False)
    assert report.resumed == 1 and report.images == 3 and report.masks == 11
    data = json.loads(report.results.read_text())
    assert data["anydistill"]["complete"] is True
    assert [a["id"] for a in data["annotations"]] == list(range(1, 12))
    # Other settings into the same folder: refused, the file kept.
    with pytest.raises(Exception, match="other settings"):
        segment_folder(
            sam_pth, folder, tmp_path / "out", prompts=prompts, coco_prompt="point", progress=False
        )


# ---------------------------------------------------------------------------------------------- CLI


def _one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("anydistill: error: "), err
    return lines[0]


def test_cli_end_to_end(sam_pth, folder, tmp_path, capsys) -> None:
    base = ["segment", "--checkpoint", str(sam_pth), "--images", str(folder)]
    prompts = _write(tmp_path / "prompts.json", PROMPTS)
    out = tmp_path / "p"
    assert main([*base, "--prompts", str(prompts), "--out", str(out), "--overlays", "--batch-size", "2"]) == 0
    assert "11 mask(s) for 3 image(s)" in capsys.readouterr().out
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == [
        "overlays/a.png", "overlays/c.png", "overlays/sub/b.png"]  # fmt: skip
    assert _read(out / "overlays" / "sub" / "b.png").shape == (150, 110, 3)
    assert main([*base, "--prompts", str(prompts), "--out", str(out)]) == 0  # a rerun: all done already
    assert "(3 from an earlier run)" in capsys.readouterr().out
    auto = tmp_path / "auto"
    argv = [*base, "--auto", "--points-per-side", "4", "--pred-iou-thresh", "0", "--stability-thresh", "0"]
    assert main([*argv, "--out", str(auto)]) == 0
    data = json.loads((auto / RESULTS_NAME).read_text())
    assert sorted(im["file_name"] for im in data["images"]) == sorted(SIZES)
    assert len(data["annotations"]) >= 3 and len({a["id"] for a in data["annotations"]}) == len(
        data["annotations"]
    )
    for ann in data["annotations"]:
        im = next(i for i in data["images"] if i["id"] == ann["image_id"])
        assert _decode(ann).shape == (im["height"], im["width"])


BAD = [
    pytest.param("{not json", [], "not valid JSON", id="not-json"),
    pytest.param({"nope.png": {"points": [[1, 1]]}}, [], "'nope.png': no such image", id="missing-image"),
    pytest.param(
        {"a.png": {"points": [[95, 10]]}}, [], "point [95, 10] lies outside the 90x60", id="outside"
    ),
    pytest.param({"sub/b.png": [{"box": [1, 2, 3]}]}, [], "is not [x0, y0, x1, y1]", id="box-3-numbers"),
    pytest.param({"a.png": {"boxes": [[30, 5, 10, 20]]}}, [], "needs x1 > x0", id="box-reversed"),
    pytest.param({"a.png": {"boxes": [[0, 0, 91, 20]]}}, [], "outside the 90x60", id="box-outside"),
    pytest.param({"a.png": {"points": [[5, 5, 0]]}}, [], "lone negative click", id="lone-negative"),
    pytest.param({"a.png": {"points": [[5, 5, 2]]}}, [], "label 1 or 0", id="bad-label"),
    pytest.param({"a.png": [{"points": [[5, 5, 0]]}]}, [], "only negative clicks", id="negatives-only"),
    pytest.param({"a.png": {"point": [[5, 5]]}}, [], "unknown key(s) ['point']", id="typo-key"),
    pytest.param({"a.png": 3}, [], "got int", id="entry-type"),
    pytest.param(
        {"a.png": {"points": [[1, 1]]}}, ["--auto"], "exactly one of --prompts", id="prompts-and-auto"
    ),
    pytest.param(None, [], "exactly one of --prompts", id="neither"),
    pytest.param(
        None, ["--auto", "--point", "3,3"], "--point/--box are for one --image", id="point-with-images"
    ),
    pytest.param(None, ["--auto", "--batch-size", "0"], "--batch-size: must be at least 1", id="batch-size"),
]


@pytest.mark.parametrize(("prompts", "extra", "message"), BAD)
def test_bad_input_is_one_line(sam_pth, folder, tmp_path, capsys, prompts, extra, message) -> None:
    argv = ["segment", "--checkpoint", str(sam_pth), "--images", str(folder), "--out", str(tmp_path / "o")]
    if prompts is not None:
        path = tmp_path / "prompts.json"
        path.write_text(prompts if isinstance(prompts, str) else json.dumps(prompts))
        argv += ["--prompts", str(path)]
    assert main([*argv, *extra]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert message in line
    if prompts is not None and "--auto" not in extra:
        assert "prompts.json" in line  # names the file
    assert not (tmp_path / "o").exists()  # refused before any work


def test_image_with_prompts_file_is_refused(sam_pth, folder, tmp_path, capsys) -> None:
    argv = ["segment", "--checkpoint", str(sam_pth), "--image", str(folder / "a.png"), "--prompts", "p.json"]
    assert main(argv) == 2
    assert "--prompts FILE goes with --images" in _one_error_line(capsys.readouterr().err)


def test_unreadable_image_is_skipped_with_a_warning(sam_pth, folder, tmp_path, capsys) -> None:
    """As ``anydistill predict``: a broken image is set aside with one warning line and listed, not fatal."""
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.png", "c.jpg"):
        (images / name).write_bytes((folder / name).read_bytes())
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    prompts = _write(
        tmp_path / "prompts.json", {"a.png": {"points": [[5, 5]]}, "broken.png": {"points": [[1, 1]]}}
    )
    argv = ["segment", "--checkpoint", str(sam_pth), "--images", str(images), "--prompts", str(prompts)]
    assert main([*argv, "--out", str(tmp_path / "o")]) == 0
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if "anydistill: warning:" in line]
    assert len(warnings) == 1 and "broken.png" in warnings[0]
    assert "skipped 1 unreadable image(s)" in captured.out
    data = json.loads((tmp_path / "o" / RESULTS_NAME).read_text())
    assert [im["file_name"] for im in data["images"]] == ["a.png"]
