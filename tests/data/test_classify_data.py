"""Classification data: class-per-folder sets, unlabeled folders, toyworld object crops."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from anydistill.data.classify import OBJECT_CLASSES, ClassFolderDataset, ToyWorldObjects, UnlabeledImages
from anydistill.errors import ConfigError, DataError

RNG = np.random.default_rng(0)


def _image(path: Path, h: int = 6, w: int = 8, mode: str = "RGB", fmt: str = "PNG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "I;16":
        img = Image.fromarray(RNG.integers(0, 65536, size=(h, w), dtype=np.uint16))
    else:
        channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
        arr = RNG.integers(0, 256, size=(h, w, channels), dtype=np.uint8)
        img = Image.fromarray(arr[..., 0] if channels == 1 else arr, mode)
    img.save(path, format=fmt)


def _split(root: Path, layout: dict[str, list[str]]) -> Path:
    for cls, files in layout.items():
        for name in files:
            _image(root / cls / name, fmt="JPEG" if name.endswith(".jpg") else "PNG")
    return root


def _one_line_naming(err: pytest.ExceptionInfo, *parts: str) -> str:
    message = str(err.value)
    assert "\n" not in message, message
    for part in parts:
        assert part in message, (part, message)
    return message


# ------------------------------------------------------------------------------ ClassFolderDataset
def test_class_table_is_sorted_and_items_are_recursive_sorted_and_typed(tmp_path: Path) -> None:
    root = _split(
        tmp_path, {"zebra": ["b.png", "a.jpg"], "ant": ["deep/er/x.png", "y.png"], "moth": ["m.png"]}
    )
    (root / ".ipynb_checkpoints").mkdir()  # hidden: not a class
    _image(root / "ant" / ".hidden.png")  # hidden: not an image of the class
    (root / "moth" / "notes.txt").write_text("not an image")
    (root / "moth" / "anim.gif").write_bytes(b"GIF89a")

    ds = ClassFolderDataset(root)
    assert ds.classes == ["ant", "moth", "zebra"]
    assert [ds[i]["id"] for i in range(len(ds))] == [
        "ant/deep/er/x.png",
        "ant/y.png",
        "moth/m.png",
        "zebra/a.jpg",
        "zebra/b.png",
    ]
    assert ds.targets == [0, 0, 1, 2, 2]
    assert ds.ignored_extensions == {".txt": 1, ".gif": 1}
    item = ds[3]
    assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, 6, 8)
    assert item["label"].dtype == torch.int64 and int(item["label"]) == 2
    assert int(ds[-1]["label"]) == 2
    with pytest.raises(IndexError):
        ds[5]


def test_grey_rgba_and_16_bit_images_become_rgb(tmp_path: Path) -> None:
    for i, mode in enumerate(("L", "RGBA", "I;16")):
        _image(tmp_path / "a" / f"{i}.png", mode=mode)
    _image(tmp_path / "b" / "x.png")
    ds = ClassFolderDataset(tmp_path)
    for i in range(3):
        image = ds[i]["image"]
        assert image.dtype == torch.uint8 and image.shape == (3, 6, 8)
    assert torch.equal(ds[0]["image"][0], ds[0]["image"][1])  # grey replicated


def test_transform_gets_the_image_tensor(tmp_path: Path) -> None:
    _split(tmp_path, {"a": ["1.png"], "b": ["2.png"]})
    ds = ClassFolderDataset(tmp_path, transform=lambda image: (image.shape, image.dtype))
    assert ds[0]["image"] == ((3, 6, 8), torch.uint8)


def test_classes_argument_reuses_the_training_table(tmp_path: Path) -> None:
    train = ClassFolderDataset(_split(tmp_path / "train", {c: ["1.png"] for c in ("cat", "dog", "eel")}))
    val = ClassFolderDataset(
        _split(tmp_path / "val", {"eel": ["1.png"], "cat": ["1.png"]}), classes=train.classes
    )
    assert val.classes == ["cat", "dog", "eel"]  # a class without a folder in this split is fine
    assert val.targets == [0, 2]
    assert [int(val[i]["label"]) for i in range(2)] == [0, 2]

    _split(tmp_path / "val", {"fox": ["1.png"]})
    with pytest.raises(DataError) as err:
        ClassFolderDataset(tmp_path / "val", classes=train.classes)
    _one_line_naming(err, "'fox'", str(tmp_path / "val" / "fox"), "not in the given class table")


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing", "not found"),
        ("no_class_folders", "no class folders"),
        ("one_class", "two or more"),
        ("empty_class", "holds no images"),
    ],
)
def test_bad_folders_are_one_line_data_errors_naming_the_folder(
    tmp_path: Path, case: str, expected: str
) -> None:
    root = tmp_path / "split"
    named = root
    if case == "no_class_folders":
        _image(root / "loose.png")
    elif case == "one_class":
        _split(root, {"only": ["1.png", "2.png"]})
    elif case == "empty_class":
        _split(root, {"a": ["1.png"], "c": ["2.png"]})
        (root / "b" / "sub").mkdir(parents=True)
        (root / "b" / "sub" / "readme.txt").write_text("no images here")
        named = root / "b"
    with pytest.raises(DataError) as err:
        ClassFolderDataset(root)
    message = _one_line_naming(err, str(named), expected)
    if case == "one_class":
        assert "'only'" in message


def test_bad_arguments_are_config_errors(tmp_path: Path) -> None:
    _split(tmp_path, {"a": ["1.png"], "b": ["2.png"]})
    for classes in (["a"], ["a", "b", "a"], "ab"):
        with pytest.raises(ConfigError, match="classes"):
            ClassFolderDataset(tmp_path, classes=classes)
    with pytest.raises(ConfigError, match="on_bad_image"):
        ClassFolderDataset(tmp_path, on_bad_image="ignore")  # type: ignore[arg-type]


def test_unreadable_image_raises_or_is_replaced(tmp_path: Path) -> None:
    _split(tmp_path, {"a": ["1.png", "2.png"], "b": ["3.png"]})
    (tmp_path / "a" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(DataError) as err:
        ClassFolderDataset(tmp_path)[0]
    _one_line_naming(err, str(tmp_path / "a" / "1.png"))

    ds = ClassFolderDataset(tmp_path, on_bad_image="skip")
    assert ds[0]["id"] == "a/2.png" and len(ds) == 3
    assert [p for p, _ in ds.skipped] == [tmp_path / "a" / "1.png"]


# --------------------------------------------------------------------------------- UnlabeledImages
def test_unlabeled_images_are_found_recursively_and_labels_ignored(tmp_path: Path) -> None:
    _split(tmp_path, {"a": ["1.png"], "b/deep": ["2.jpg"], ".": ["0.png"]})
    ds = UnlabeledImages(tmp_path)
    assert [ds[i]["id"] for i in range(len(ds))] == ["0.png", "a/1.png", "b/deep/2.jpg"]
    assert set(ds[0]) == {"image", "id"}
    assert ds[1]["image"].shape == (3, 6, 8)


def test_unlabeled_images_empty_or_missing_folder(tmp_path: Path) -> None:
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(DataError) as err:
        UnlabeledImages(tmp_path / "empty")
    _one_line_naming(err, str(tmp_path / "empty"), "no images")
    with pytest.raises(DataError) as err:
        UnlabeledImages(tmp_path / "absent")
    _one_line_naming(err, str(tmp_path / "absent"), "not found")


# --------------------------------------------------------------------------------- ToyWorldObjects
def test_toyworld_objects_are_deterministic_random_access() -> None:
    a = ToyWorldObjects("wide", 24, 10, seed=3)
    b = ToyWorldObjects("wide", 24, 10, seed=3)
    first = [a[i] for i in (7, 2)]
    again = [b[i] for i in (2, 7)][::-1]  # other instance, other order
    for x, y in zip(first, again, strict=True):
        assert (
            torch.equal(x["image"], y["image"]) and int(x["label"]) == int(y["label"]) and x["id"] == y["id"]
        )
    other = ToyWorldObjects("wide", 24, 10, seed=4)
    assert not torch.equal(a[2]["image"], other[2]["image"])
    assert a[2]["id"] != a[7]["id"]


def test_toyworld_objects_labels_are_object_kinds_and_objects_are_centred() -> None:
    ds = ToyWorldObjects("wide", 32, 40, seed=0)
    assert ds.classes == list(OBJECT_CLASSES) == ["sphere", "box", "cylinder", "cone", "ellipsoid"]
    crops = [ds.crop(i) for i in range(len(ds))]
    labels = [c["label"] for c in crops]
    assert set(labels) <= set(range(5)) and len(set(labels)) >= 4
    assert all(c["image"].shape == (32, 32, 3) and c["image"].dtype == np.uint8 for c in crops)
    centre = [c["mask"][12:20, 12:20].mean() for c in crops]  # the central 8 x 8 pixels
    assert np.mean(np.array(centre) >= 0.5) >= 0.9, centre
    assert all(0.03 < c["mask"].mean() < 0.8 for c in crops)  # an object with context, not a wall of it
    item = ds[5]
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.uint8
    assert torch.equal(item["image"], torch.from_numpy(crops[5]["image"]).permute(2, 0, 1))
    assert int(item["label"]) == labels[5] and item["id"].startswith("wide_0_")


def test_toyworld_objects_narrow_domain_and_bad_arguments() -> None:
    narrow = ToyWorldObjects("narrow", 16, 12, seed=1, transform=lambda image: image.float())
    assert {int(narrow[i]["label"]) for i in range(12)} <= {0, 1, 2}  # sphere, box, cylinder
    assert narrow[0]["image"].dtype == torch.float32
    for kwargs in ({"size": 2}, {"count": -1}, {"min_area": 0.0}, {"context": -0.1}):
        with pytest.raises(ConfigError):
            ToyWorldObjects("wide", **{"size": 16, "count": 4, **kwargs})
    with pytest.raises(ConfigError, match="min_area=0.95"):
        ToyWorldObjects("narrow", 16, 1, min_area=0.95)[0]
    with pytest.raises(IndexError):
        narrow[12]


# ------------------------------------------------------------------------------------- real sets
def test_cifar10_and_ants_bees_splits(shared_data: Path) -> None:
    cifar = shared_data / "cifar10"
    if not cifar.is_dir():
        pytest.skip(f"{cifar} is absent")
    train = ClassFolderDataset(cifar / "train")
    test = ClassFolderDataset(cifar / "test", classes=train.classes)
    assert train.classes[:3] == ["airplane", "automobile", "bird"] and len(train.classes) == 10
    assert len(train) == 10_000 and len(test) == 10_000
    assert np.bincount(train.targets).tolist() == [1000] * 10
    item = test[9_999]
    assert item["image"].shape == (3, 32, 32) and item["id"].startswith("truck/")
    assert int(item["label"]) == 9

    bees = shared_data / "ants-bees"
    ants_train = ClassFolderDataset(bees / "train")
    ants_val = ClassFolderDataset(bees / "val", classes=ants_train.classes)
    assert ants_train.classes == ["ants", "bees"] and (len(ants_train), len(ants_val)) == (244, 153)
    assert ants_train.ignored_extensions == {
        ".gif": 1
    }  # one GIF among the ants, left out as ImageFolder does
    assert ants_val[0]["image"].shape[0] == 3
