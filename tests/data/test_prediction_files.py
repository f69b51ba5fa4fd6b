"""The prediction files: a non-finite disparity pixel must not blank the 16-bit picture."""

from __future__ import annotations

import warnings

import numpy as np
from PIL import Image

from anydistill.data.prediction_files import write_depth


def test_a_nan_pixel_does_not_blank_the_16_bit_picture(tmp_path):
    disp = np.linspace(0.5, 2.0, 40 * 30, dtype=np.float32).reshape(40, 30)
    disp[3, 4], disp[10, 10] = np.nan, np.inf  # e.g. an fp16 graph that overflowed
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "invalid value in cast" either
        raw = write_depth(tmp_path, "a", disp.copy())
    png16 = np.asarray(Image.open(tmp_path / "png16" / "a.png")).astype(np.int64)
    assert np.isnan(np.load(raw)[3, 4])  # the raw file keeps what the model said
    assert png16[0, 0] == 0 and png16[-1, -1] == 65535  # scaled over the finite values
    assert png16[3, 4] == 0 and png16[10, 10] == 65535
    assert (np.diff(png16[20]) >= 0).all() and len(np.unique(png16)) > 1000
