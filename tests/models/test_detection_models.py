"""Detection students: torchvision's detectors behind one convention, over a timm backbone."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection import retinanet as tv_retinanet

from anydistill.losses.detection import DenseClassificationLoss
from anydistill.models.backbones import TimmBackbone
from anydistill.models.detection import build_detector, retinanet_anchor_sizes

TAPS = {"retinanet": (2, 3, 4), "fcos": (2, 3, 4), "faster_rcnn": (1, 2, 3, 4), "mask_rcnn": (1, 2, 3, 4)}


def _model(arch: str, seed: int = 0, size: int = 64):
    torch.manual_seed(seed)
    backbone = TimmBackbone("mobilenetv4_conv_small", out_indices=TAPS[arch])
    return build_detector(arch, backbone, 3, size, fpn_channels=32 if arch == "fcos" else 16)


def _targets(size: int = 64, crowd: bool = False):
    masks = torch.zeros(2, size, size, dtype=torch.bool)
    masks[0, 8:30, 10:40] = True
    masks[1, 36:60, 30:50] = True
    one = {"boxes": torch.tensor([[10.0, 8, 40, 30], [30, 36, 50, 60]]), "labels": torch.tensor([0, 2]),
           "iscrowd": torch.tensor([False, crowd]), "masks": masks}  # fmt: skip
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long),
             "iscrowd": torch.zeros(0, dtype=torch.bool), "masks": torch.zeros(0, size, size, dtype=torch.bool)}  # fmt: skip
    return [one, empty]


@pytest.mark.parametrize("arch", ["retinanet", "fcos", "faster_rcnn", "mask_rcnn"])
def test_train_losses_backprop_and_eval_predictions(arch: str) -> None:
    model = _model(arch).train()
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    losses = model(images, _targets())
    assert all(torch.isfinite(v) for v in losses.values()) and len(losses) >= 2
    sum(losses.values()).backward()
    stem = next(model.detector.backbone.body.parameters())
    assert stem.grad is not None and stem.grad.abs().sum() > 0  # the loss reaches the timm backbone
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2
    for det in out:
        assert det["boxes"].shape[1] == 4 and det["boxes"].shape[0] == det["scores"].shape[0] <= 100
        if len(det["labels"]):  # labels come back in 0 … K-1 (two-stage heads shift out their background 0)
            assert 0 <= int(det["labels"].min()) and int(det["labels"].max()) <= 2
            assert (det["boxes"] >= 0).all() and (det["boxes"] <= 64).all()
    if arch == "mask_rcnn":
        assert out[0]["masks"].shape[1:] == (1, 64, 64)
    with pytest.raises(ValueError, match="needs targets"):
        model.train()(images)


def test_two_stage_shifts_labels_in_and_out() -> None:
    model = _model("faster_rcnn")
    t = model._target_in({"boxes": torch.zeros(1, 4), "labels": torch.tensor([0])})
    assert t["labels"].tolist() == [1]
    assert model._prediction_out({"labels": torch.tensor([1, 3])})["labels"].tolist() == [0, 2]
    assert _model("retinanet")._target_in({"boxes": torch.zeros(1, 4), "labels": torch.tensor([0])})[
        "labels"
    ].tolist() == [0]


def test_retinanet_anchor_sizes_are_torchvisions_for_its_strides() -> None:
    expected = tv_retinanet._default_anchorgen().sizes
    assert retinanet_anchor_sizes([8, 16, 32, 64, 128]) == tuple(expected)
    assert retinanet_anchor_sizes([4]) == ((16, 20, 25),)


def test_focal_head_loss_is_torchvisions_and_ce_replaces_it() -> None:
    model = _model("retinanet").train()
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    torch.manual_seed(1)
    default = model(images, _targets())["classification"]
    model.set_classification_loss(DenseClassificationLoss("focal"))
    ours = model(images, _targets())["classification"]
    torch.testing.assert_close(ours, default)  # our focal = torchvision's RetinaNet head loss
    model.set_classification_loss(DenseClassificationLoss("ce"))
    assert model(images, _targets())["classification"] > 2 * default  # the easy-negative flood
    with pytest.raises(ValueError, match="replaceable for retinanet students, not fcos"):
        _model("fcos").set_classification_loss(DenseClassificationLoss("ce"))


def test_retinanet_ignores_anchors_on_crowd_boxes() -> None:
    model = _model("retinanet").train()
    images = torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8)
    crowd_only = [
        {
            "boxes": torch.tensor([[10.0, 8, 40, 30]]),
            "labels": torch.tensor([1]),
            "iscrowd": torch.tensor([True]),
        }
    ]
    plain = [{**crowd_only[0], "iscrowd": torch.tensor([False])}]
    nothing = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    crowd_loss, plain_loss, empty_loss = (model(images, t) for t in (crowd_only, plain, nothing))
    assert (
        crowd_loss["bbox_regression"] == 0 and plain_loss["bbox_regression"] > 0
    )  # no positive on a crowd box
    # its anchors are not negatives either: fewer anchors counted than in an empty image
    assert crowd_loss["classification"] < empty_loss["classification"]


def test_two_stage_drops_crowd_boxes_from_training_targets() -> None:
    model = _model("mask_rcnn")
    t = model._target_in(_targets(crowd=True)[0])
    assert (
        t["boxes"].tolist() == [[10.0, 8, 40, 30]]
        and t["labels"].tolist() == [1]
        and t["masks"].shape[0] == 1
    )
    assert t["masks"].dtype == torch.uint8
    with pytest.raises(ValueError, match="mask_rcnn training targets need masks"):
        model._target_in({"boxes": torch.zeros(1, 4), "labels": torch.tensor([0])})


def test_build_detector_argument_errors() -> None:
    backbone = TimmBackbone("mobilenetv4_conv_small", out_indices=(2, 3, 4))
    with pytest.raises(ValueError, match="arch must be one of retinanet, fcos, faster_rcnn, mask_rcnn"):
        build_detector("yolo", backbone, 3, 64)
    with pytest.raises(ValueError, match="fcos needs fpn_channels divisible by 32"):
        build_detector("fcos", backbone, 3, 64, fpn_channels=48)
    with pytest.raises(ValueError, match="num_classes must be >= 1"):
        build_detector("retinanet", backbone, 0, 64)


@pytest.mark.parametrize(
    ("name", "arch", "backbone", "fpn"),
    [
        ("det_tiny", "retinanet", "mobilenetv4_conv_small", 64),
        ("det_small", "retinanet", "mobilenetv4_conv_medium", 128),
        ("det_tiny_fcos", "fcos", "mobilenetv4_conv_small", 64),
        ("det_tiny_frcnn", "faster_rcnn", "mobilenetv4_conv_small", 64),
        ("det_tiny_maskrcnn", "mask_rcnn", "mobilenetv4_conv_small", 64),
    ],
)
def test_zoo_entries_are_what_their_names_say(name, arch, backbone, fpn) -> None:
    from anydistill.models.zoo import build_model

    model = build_model(name, num_classes=4)
    assert (model.arch, model.backbone.name, model.detector.backbone.out_channels) == (arch, backbone, fpn)
    assert model.input_size == 512 and model.num_classes == 4 and model.input_multiple == 32
    out = model.forward_network(torch.zeros(1, 3, 64, 64))
    if arch in ("retinanet", "fcos"):
        anchors_per_location = 9 if arch == "retinanet" else 1
        locations = sum((64 // s) ** 2 if s <= 64 else 1 for s in model.strides)
        assert out["cls_logits"].shape == (1, anchors_per_location * locations, 4)
    else:
        assert len(out["objectness"]) == len(model.strides) == 5  # RPN over P2…P6


def test_zoo_detection_kwargs_errors_are_config_errors() -> None:
    from anydistill.errors import ConfigError
    from anydistill.models.zoo import build_model

    with pytest.raises(ConfigError, match="model.kwargs: fcos needs fpn_channels divisible by 32"):
        build_model("det_tiny_fcos", fpn_channels=48)
    with pytest.raises(ConfigError, match="model.kwargs: arch must be one of"):
        build_model("det_tiny", arch="ssd")
