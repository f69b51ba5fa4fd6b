"""Bad numbers on the command line (and in the API calls behind it) are one-line errors naming the option:
``data toyworld`` and ``evaluate`` refuse empty selections (``--count 0``) and impossible values
instead of succeeding with empty output or ending in a traceback."""

from __future__ import annotations

import pytest

from anydistill import api
from anydistill.cli import main
from anydistill.data.toyworld import write_toyworld
from anydistill.errors import ConfigError, DataError
from anydistill.eval.evaluate import evaluate, evaluate_promptable

pytestmark = pytest.mark.usefixtures("one_thread")


def _one_line_error(capsys, argv: list[str]) -> str:
    """Run the CLI; assert exit 2 with exactly one stderr line and no traceback; return that line."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("anydistill: error: ") and "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize(
    ("option", "value"),
    [("--count", "0"), ("--count", "-5"), ("--size", "0"), ("--size", "-3"), ("--seed", "-1")],
)
def test_toyworld_bad_values(tmp_path, capsys, option, value) -> None:
    out = tmp_path / "toy"
    line = _one_line_error(capsys, ["data", "toyworld", "--out", str(out), option, value])
    assert option in line and value in line
    assert not out.exists()  # refused before anything is written


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"count": 0}, "count"), ({"count": -5}, "count"), ({"size": 0}, "size"), ({"seed": -1}, "seed")],
)
def test_toyworld_api_bad_values(tmp_path, kwargs, name) -> None:
    args = {"count": 2, "size": 16, "seed": 0, **kwargs}
    with pytest.raises(ConfigError, match=f"^{name}: ") as err:
        api.make_toyworld(tmp_path / "a", **args)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=f"^{name}: "):
        write_toyworld(tmp_path / "b", domain="wide", progress=False, **args)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_toyworld_good_values_still_work(tmp_path, capsys) -> None:
    out = tmp_path / "toy"
    assert main(["data", "toyworld", "--out", str(out), "--count", "1", "--size", "16", "--seed", "0"]) == 0
    assert len(list((out / "images").iterdir())) == 1


EVALUATE_OPTIONS = ["--count", "--size", "--batch-size", "--max-clicks", "--max-instances"]


@pytest.mark.parametrize("task", ["auto", "promptable"])
@pytest.mark.parametrize("value", ["0", "-1"])
@pytest.mark.parametrize("option", EVALUATE_OPTIONS)
def test_evaluate_bad_values(tmp_path, capsys, option, value, task) -> None:
    """Checked before the checkpoint is read (a missing one is not what is reported)."""
    line = _one_line_error(
        capsys, ["evaluate", "--checkpoint", str(tmp_path / "missing.ckpt"), "--task", task, option, value]
    )
    assert option in line and value in line


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"count": 0}, "count"), ({"image_size": 0}, "image_size"), ({"batch_size": 0}, "batch_size"),
     ({"seed": -1}, "seed")],
)  # fmt: skip
def test_evaluate_api_bad_values(tmp_path, kwargs, name) -> None:
    with pytest.raises(ConfigError, match=f"^{name}: "):
        evaluate(tmp_path / "missing.ckpt", progress=False, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"count": 0}, "count"), ({"max_clicks": 0}, "max_clicks"), ({"max_instances": -1}, "max_instances"),
     ({"seed": -1}, "seed"), ({"frame": "pixels"}, "frame")],
)  # fmt: skip
def test_evaluate_promptable_api_bad_values(tmp_path, kwargs, name) -> None:
    with pytest.raises(ConfigError, match=f"^{name}: "):
        evaluate_promptable(tmp_path / "missing.ckpt", progress=False, **kwargs)


@pytest.mark.parametrize("layout", ["empty_images", "empty_root"])
def test_evaluate_folder_without_images(tmp_path, depth_ckpt, capsys, layout) -> None:
    data = tmp_path / "data"
    (data / "images" if layout == "empty_images" else data).mkdir(parents=True)
    (data / "notes.txt").write_text("no images here")
    line = _one_line_error(capsys, ["evaluate", "--checkpoint", str(depth_ckpt), "--data", str(data)])
    assert str(data) in line
    with pytest.raises(DataError) as err:
        evaluate(depth_ckpt, str(data), progress=False)
    assert str(data) in str(err.value)


def test_evaluate_good_values_still_work(depth_ckpt, capsys) -> None:
    assert main(["evaluate", "--checkpoint", str(depth_ckpt), "--count", "2", "--batch-size", "1"]) == 0
    assert "| images | 2.0000 |" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("option", "value"), [("--batch-size", "0"), ("--batch-size", "-4"), ("--size", "0")]
)
def test_predict_bad_values(tmp_path, depth_ckpt, capsys, option, value) -> None:
    images = tmp_path / "images"
    images.mkdir()
    line = _one_line_error(
        capsys, ["predict", "--checkpoint", str(depth_ckpt), "--images", str(images), "--out",
                 str(tmp_path / "out"), option, value],
    )  # fmt: skip
    assert option in line and value in line
    assert not (tmp_path / "out").exists()
