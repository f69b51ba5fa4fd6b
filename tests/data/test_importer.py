import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anydistill.cli import main
from anydistill.data.folder import FolderDataset
from anydistill.data.importer import import_pairs, parse_label_map
from anydistill.errors import ConfigError, DataError


def make_pairs(root: Path, n: int = 5, values=(0, 255)) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        (root / "image").mkdir(parents=True, exist_ok=True)
        (root / "label").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(root / "image" / f"{i}.png")
        Image.fromarray(rng.choice(np.array(values, np.uint8), (16, 16))).save(root / "label" / f"{i}.png")


def test_import_maps_values_and_holds_out(tmp_path):
    make_pairs(tmp_path / "src")
    out = import_pairs(tmp_path / "src/image", tmp_path / "src/label", tmp_path / "out",
                       {0: 0, 255: 1}, ["background", "membrane"], holdout=2, seed=3)  # fmt: skip
    train = FolderDataset(out / "train", task="semantic")
    val = FolderDataset(out / "val", task="semantic")
    assert len(train) == 3 and len(val) == 2
    assert not set(train.ids) & set(val.ids)
    original = np.asarray(Image.open(tmp_path / "src/label" / f"{val.ids[0]}.png"))
    np.testing.assert_array_equal(val[0]["semantic"], (original == 255).astype(np.int64))
    table = json.loads((out / "val" / "classes.json").read_text())
    assert [c["name"] for c in table["classes"]] == ["background", "membrane"]


def test_values_outside_map_are_an_error_naming_the_file(tmp_path):
    make_pairs(tmp_path / "src", values=(0, 128, 255))
    with pytest.raises(DataError, match=r"label/0.png.*\[128\]"):
        import_pairs(tmp_path / "src/image", tmp_path / "src/label", tmp_path / "out", {0: 0, 255: 1})


def test_missing_label_and_bad_map(tmp_path):
    make_pairs(tmp_path / "src")
    (tmp_path / "src/label/4.png").unlink()
    with pytest.raises(DataError, match="4.png.*no label"):
        import_pairs(tmp_path / "src/image", tmp_path / "src/label", tmp_path / "out")
    with pytest.raises(ConfigError, match="^--label-map: .*VALUE:CLASS_ID"):
        parse_label_map(["255=1"])


def test_cli_import(tmp_path, capsys):
    make_pairs(tmp_path / "src", n=4)
    code = main(["data", "import", "--images", str(tmp_path / "src/image"), "--labels", str(tmp_path / "src/label"),
                 "--out", str(tmp_path / "o"), "--label-map", "0:0", "255:1", "--holdout", "1"])  # fmt: skip
    assert code == 0
    assert "1 held out" in capsys.readouterr().out
    assert len(list((tmp_path / "o/train/semantic").glob("*.png"))) == 3


# ------------------------------------------------------------------------ checks (issue 10)
def _pair(root: Path, name: str, mask: np.ndarray, image_hw: tuple[int, int] | None = None) -> None:
    """Writes root/image/<name>.png (grey, of the mask's size unless ``image_hw``) and root/label/<name>.png."""
    (root / "image").mkdir(parents=True, exist_ok=True)
    (root / "label").mkdir(parents=True, exist_ok=True)
    hw = image_hw or mask.shape
    Image.fromarray(np.full(hw, 7, np.uint8)).save(root / "image" / f"{name}.png")
    Image.fromarray(mask).save(root / "label" / f"{name}.png")


def _run(root: Path, out: Path, **kwargs) -> Path:
    return import_pairs(root / "image", root / "label", out, **kwargs)


def _nothing_left(out: Path) -> None:
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")], (
        "temporary folder left"
    )


def test_16bit_value_without_map_is_refused_naming_file_and_value(tmp_path):
    src = tmp_path / "src"
    _pair(src, "a", np.zeros((4, 4), np.uint8))
    _pair(src, "b", np.array([[0, 300], [1, 2]], np.uint16))
    assert Image.open(src / "label/b.png").mode == "I;16"
    with pytest.raises(DataError, match=r"label/b\.png: mask holds \[300\].*--label-map"):
        _run(src, tmp_path / "out")
    _nothing_left(tmp_path / "out")


def test_16bit_values_through_a_label_map(tmp_path):
    src = tmp_path / "src"
    _pair(src, "a", np.array([[0, 256], [256, 0]], np.uint16))
    out = _run(src, tmp_path / "out", label_map={0: 0, 256: 1})
    written = np.asarray(Image.open(out / "semantic/a.png"))
    np.testing.assert_array_equal(written, [[0, 1], [1, 0]])
    assert [c["name"] for c in json.loads((out / "classes.json").read_text())["classes"]] == [
        "class_0",
        "class_1",
    ]
    assert FolderDataset(out, task="semantic")[0]["semantic"].tolist() == [[0, 1], [1, 0]]


def test_label_map_target_out_of_range_is_a_config_error():
    with pytest.raises(ConfigError, match=r"^--label-map: 0:300: class id 300 is out of range") as info:
        parse_label_map(["0:300"])
    assert "\n" not in str(info.value)
    assert parse_label_map(["7:255", "0:0"]) == {7: 255, 0: 0}  # 255 = ignore is a valid target
    for bad in (["0:0", "0:1"], [], ["-1:0"], ["1:²"]):
        with pytest.raises(ConfigError, match="^--label-map: "):
            parse_label_map(bad)
    assert parse_label_map(None) is None


def test_label_map_checked_through_the_api_too(tmp_path):
    _pair(tmp_path / "src", "a", np.zeros((4, 4), np.uint8))
    with pytest.raises(ConfigError, match="class id 256"):
        _run(tmp_path / "src", tmp_path / "out", label_map={0: 256})
    _nothing_left(tmp_path / "out")


def test_fewer_class_names_than_ids_in_use_is_refused(tmp_path):
    src = tmp_path / "src"
    _pair(src, "a", np.array([[0, 1], [2, 3]], np.uint8))
    with pytest.raises(ConfigError, match=r"--classes: 2 name\(s\).*ids \[2, 3\].*no name"):
        _run(src, tmp_path / "out", class_names=["a", "b"])
    _nothing_left(tmp_path / "out")
    with pytest.raises(ConfigError, match=r"--classes: .*ids \[2\]"):  # from the label map, before reading
        _run(src, tmp_path / "out", label_map={0: 0, 1: 1, 2: 2, 3: 255}, class_names=["a", "b"])
    out = _run(src, tmp_path / "out", class_names=["a", "b", "c", "d", "e"])  # more names than used: fine
    assert len(json.loads((out / "classes.json").read_text())["classes"]) == 5


def test_bad_class_names_are_refused(tmp_path):
    src = tmp_path / "src"
    _pair(src, "a", np.zeros((4, 4), np.uint8))
    for names, problem in (
        (["a", "a"], "duplicate"),
        (["a", " "], "empty"),
        ([f"c{i}" for i in range(256)], "256"),
    ):
        with pytest.raises(ConfigError, match=f"--classes: .*{problem}"):
            _run(src, tmp_path / "out", class_names=names)


def test_without_label_map_classes_json_is_generated_and_trainable(tmp_path):
    src = tmp_path / "src"
    _pair(src, "a", np.array([[0, 2], [255, 0]], np.uint8))
    _pair(src, "b", np.array([[1, 0], [0, 0]], np.uint8))
    out = _run(src, tmp_path / "out")
    table = json.loads((out / "classes.json").read_text())
    assert [c["name"] for c in table["classes"]] == ["class_0", "class_1", "class_2"]
    assert table["ignore_index"] == 255
    ds = FolderDataset(out, task="semantic")
    assert ds.num_classes == 3
    assert ds[0]["semantic"].tolist() == [[0, 2], [255, 0]]


def test_corrupt_image_is_refused_and_nothing_is_left(tmp_path):
    src = tmp_path / "src"
    make_pairs(src, n=3)
    (src / "image/2.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    out = tmp_path / "deep/out"
    with pytest.raises(DataError, match=r"image/2\.png: .*corrupt"):
        _run(src, out, label_map={0: 0, 255: 1})
    assert not (tmp_path / "deep").exists()  # the parent it created is removed too
    (tmp_path / "empty_out").mkdir()
    with pytest.raises(DataError, match=r"image/2\.png"):
        _run(src, tmp_path / "empty_out", label_map={0: 0, 255: 1})
    assert list((tmp_path / "empty_out").iterdir()) == []


def test_corrupt_label_is_refused(tmp_path):
    src = tmp_path / "src"
    make_pairs(src, n=2)
    (src / "label/1.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"label/1\.png: empty file"):
        _run(src, tmp_path / "out", label_map={0: 0, 255: 1})
    _nothing_left(tmp_path / "out")


def test_label_of_another_size_is_refused(tmp_path):
    src = tmp_path / "src"
    _pair(src, "a", np.zeros((4, 6), np.uint8), image_hw=(4, 5))
    with pytest.raises(
        DataError, match=r"label/a\.png: size mismatch: label is 4x6 .* image .*a\.png is 4x5"
    ):
        _run(src, tmp_path / "out")
    _nothing_left(tmp_path / "out")


def test_exif_rotated_image_is_compared_as_training_reads_it(tmp_path):
    src = tmp_path / "src"
    _pair(src, "a", np.zeros((4, 6), np.uint8))  # label 4x6
    img = Image.fromarray(np.zeros((6, 4, 3), np.uint8))  # stored 6x4, upright 4x6 after orientation 6
    exif = Image.Exif()
    exif[0x0112] = 6
    (src / "image/a.png").unlink()
    img.save(src / "image/a.jpg", exif=exif)
    out = _run(src, tmp_path / "out")
    sample = FolderDataset(out, task="semantic")[0]
    assert sample["image"].shape[:2] == sample["semantic"].shape == (4, 6)


def test_unmapped_values_refused_or_made_ignore(tmp_path):
    src = tmp_path / "src"
    _pair(src, "a", np.array([[0, 128], [255, 0]], np.uint8))
    with pytest.raises(
        DataError, match=r"label/a\.png: mask values \[128\] are not in --label-map.*--unmapped"
    ):
        _run(src, tmp_path / "out", label_map={0: 0, 255: 1})
    _nothing_left(tmp_path / "out")
    out = _run(src, tmp_path / "out", label_map={0: 0, 255: 1}, unmapped="ignore")
    np.testing.assert_array_equal(np.asarray(Image.open(out / "semantic/a.png")), [[0, 255], [1, 0]])


def test_unmapped_ignore_without_label_map_makes_16bit_values_ignore(tmp_path):
    src = tmp_path / "src"
    _pair(src, "a", np.array([[0, 1], [65535, 1]], np.uint16))
    out = _run(src, tmp_path / "out", unmapped="ignore")
    np.testing.assert_array_equal(np.asarray(Image.open(out / "semantic/a.png")), [[0, 1], [255, 1]])


def test_depth_labels_are_checked(tmp_path):
    src = tmp_path / "src"
    (src / "image").mkdir(parents=True)
    (src / "label").mkdir()
    Image.fromarray(np.zeros((4, 5), np.uint8)).save(src / "image/a.png")
    Image.fromarray(np.full((4, 5), 1000, np.uint16)).save(src / "label/a.png")
    out = _run(src, tmp_path / "out", kind="depth")
    assert FolderDataset(out, task="depth")[0]["depth"].shape == (4, 5)
    Image.fromarray(np.full((5, 4), 1000, np.uint16)).save(src / "label/a.png")
    with pytest.raises(DataError, match=r"label/a\.png: size mismatch"):
        _run(src, tmp_path / "out2", kind="depth")
    (src / "label/a.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"label/a\.png: not an image or corrupt"):
        _run(src, tmp_path / "out2", kind="depth")
    _nothing_left(tmp_path / "out2")
    with pytest.raises(ConfigError, match="--label-map: only for --kind semantic"):
        _run(src, tmp_path / "out2", kind="depth", label_map={0: 0})


def test_empty_selection_and_non_empty_out_are_refused(tmp_path):
    (tmp_path / "src/image").mkdir(parents=True)
    (tmp_path / "src/label").mkdir()
    with pytest.raises(DataError, match=r"image: no images found"):
        _run(tmp_path / "src", tmp_path / "out")
    _nothing_left(tmp_path / "out")
    _pair(tmp_path / "src", "a", np.zeros((4, 4), np.uint8))
    (tmp_path / "out").mkdir()
    (tmp_path / "out/old.txt").write_text("x")
    with pytest.raises(DataError, match=r"out: already exists and is not empty"):
        _run(tmp_path / "src", tmp_path / "out")


def test_names_with_dots_do_not_collide(tmp_path):
    src = tmp_path / "src"
    _pair(src, "x.1", np.zeros((4, 4), np.uint8))
    _pair(src, "x.2", np.ones((4, 4), np.uint8))
    out = _run(src, tmp_path / "out")
    assert sorted(p.name for p in (out / "semantic").iterdir()) == ["x.1.png", "x.2.png"]
    assert len(FolderDataset(out, task="semantic")) == 2


@pytest.mark.parametrize(
    "extra, mask_b, expected",
    [
        ([], np.array([[0, 300], [1, 2]], np.uint16), r"label/b\.png: mask holds \[300\]"),
        (
            ["--label-map", "0:300"],
            np.zeros((2, 2), np.uint8),
            r"--label-map: 0:300: class id 300 is out of range",
        ),
        (["--classes", "only"], np.zeros((2, 2), np.uint8), r"--classes: 1 name\(s\) .*class ids \[1, 2\]"),
        (["--label-map", "0:0", "1:1"], np.zeros((2, 2), np.uint8), r"label/a\.png: mask values \[2\]"),
    ],
)
def test_cli_refusals_exit_2_with_one_line(tmp_path, capsys, extra, mask_b, expected):
    src = tmp_path / "src"
    _pair(src, "a", np.array([[0, 1], [2, 0]], np.uint8))
    _pair(src, "b", mask_b)
    code = main(["data", "import", "--images", str(src / "image"), "--labels", str(src / "label"),
                 "--out", str(tmp_path / "o"), *extra])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("anydistill: error: "), err
    assert re.search(expected, err), err
    _nothing_left(tmp_path / "o")


def test_cli_unmapped_ignore_and_class_names(tmp_path, capsys):
    src = tmp_path / "src"
    _pair(src, "a", np.array([[0, 1], [65535, 1]], np.uint16))
    code = main(["data", "import", "--images", str(src / "image"), "--labels", str(src / "label"),
                 "--out", str(tmp_path / "o"), "--unmapped", "ignore", "--classes", "bg, fg"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    ds = FolderDataset(tmp_path / "o", task="semantic")
    assert ds.classes is not None and ds.classes.names == ("bg", "fg")
    assert ds[0]["semantic"].tolist() == [[0, 1], [255, 1]]


def test_test_split_is_disjoint_and_keeps_the_validation_pairs(tmp_path):
    make_pairs(tmp_path / "src", n=8)
    args = (tmp_path / "src/image", tmp_path / "src/label")
    only_val = import_pairs(*args, tmp_path / "a", {0: 0, 255: 1}, holdout=2, seed=5)
    with_test = import_pairs(*args, tmp_path / "b", {0: 0, 255: 1}, holdout=2, test=3, seed=5)
    ids = {
        split: set(FolderDataset(with_test / split, task="semantic").ids)
        for split in ("train", "val", "test")
    }
    assert [len(ids[s]) for s in ("train", "val", "test")] == [3, 2, 3]
    assert ids["train"] | ids["val"] | ids["test"] == {str(i) for i in range(8)}
    assert not (ids["train"] & ids["test"]) and not (ids["val"] & ids["test"])
    # Adding a test split does not change which pairs validate.
    assert ids["val"] == set(FolderDataset(only_val / "val", task="semantic").ids)
    assert (with_test / "test" / "classes.json").is_file()


def test_test_split_must_leave_training_pairs(tmp_path, capsys):
    make_pairs(tmp_path / "src", n=4)
    with pytest.raises(ConfigError, match=r"--holdout 2 \+ --test 2: must leave at least one of the 4"):
        import_pairs(tmp_path / "src/image", tmp_path / "src/label", tmp_path / "o", holdout=2, test=2)
    with pytest.raises(ConfigError, match="--test must be a non-negative integer"):
        import_pairs(tmp_path / "src/image", tmp_path / "src/label", tmp_path / "o", test=-1)
    assert not (tmp_path / "o").exists()
    assert main(["data", "import", "--images", str(tmp_path / "src/image"), "--labels", str(tmp_path / "src/label"),
                 "--out", str(tmp_path / "c"), "--holdout", "1", "--test", "1"]) in (0, None)  # fmt: skip
    assert "c/test (1 for testing only)" in capsys.readouterr().out
