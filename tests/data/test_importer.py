import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anydistill.cli import main
from anydistill.data.folder import FolderDataset
from anydistill.data.importer import import_pairs, parse_label_map
from anydistill.errors import DataError


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
    with pytest.raises(DataError, match="VALUE:CLASS_ID"):
        parse_label_map(["255=1"])


def test_cli_import(tmp_path, capsys):
    make_pairs(tmp_path / "src", n=4)
    code = main(["data", "import", "--images", str(tmp_path / "src/image"), "--labels", str(tmp_path / "src/label"),
                 "--out", str(tmp_path / "o"), "--label-map", "0:0", "255:1", "--holdout", "1"])  # fmt: skip
    assert code == 0
    assert "1 held out" in capsys.readouterr().out
    assert len(list((tmp_path / "o/train/semantic").glob("*.png"))) == 3
