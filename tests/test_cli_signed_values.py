"""A negative coordinate after --point/--box reaches the command (one line saying what is wrong with it)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from anydistill.cli import _join_signed_values, main
from anydistill.models import build_model


def test_signed_values_are_joined_to_their_option_only():
    argv = ["segment", "--point", "-5,10", "--box", "-1,-2,3,4", "--point", "3,4", "--out", "-x"]
    assert _join_signed_values(argv) == [
        "segment",
        "--point=-5,10",
        "--box=-1,-2,3,4",
        "--point",
        "3,4",
        "--out",
        "-x",
    ]


def test_a_point_outside_the_image_is_one_line_not_a_usage_error(tmp_path, capsys):
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(tmp_path / "img.png")
    torch.save(build_model("sam_tiny", img_size=64).state_dict(), tmp_path / "sam.pth")
    code = main(["segment", "--checkpoint", str(tmp_path / "sam.pth"), "--image", str(tmp_path / "img.png"),
                 "--point", "-5,10", "--out", str(tmp_path / "out")])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "point [-5.0, 10.0]" in err[0] and "outside the image" in err[0]
