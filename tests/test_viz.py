import numpy as np
import pytest

from anydistill.viz import colorize_depth, colorize_mask, default_palette, image_grid, turbo


def test_turbo_endpoints_and_monotone_hue():
    rgb = turbo(np.array([0.1, 0.5, 1.0]))
    assert rgb.shape == (3, 3) and rgb.dtype == np.uint8
    # Turbo goes from blue, passes green-yellow, ends dark red.
    assert rgb[0, 2] > rgb[0, 0]
    assert rgb[1, 1] > 200
    assert rgb[2, 0] > rgb[2, 2]


def test_colorize_depth_marks_invalid_black():
    values = np.linspace(1, 2, 16, dtype=np.float32).reshape(4, 4)
    valid = np.ones_like(values, bool)
    valid[0, 0] = False
    values[1, 1] = np.nan
    rgb = colorize_depth(values, valid)
    assert rgb.shape == (4, 4, 3)
    assert (rgb[0, 0] == 0).all() and (rgb[1, 1] == 0).all()
    assert rgb[3, 3].sum() > 0


def test_colorize_mask_palette_and_ignore():
    palette = default_palette(4)
    assert len({tuple(c) for c in palette}) == 4
    mask = np.array([[0, 1], [3, 255]])
    rgb = colorize_mask(mask, palette)
    assert (rgb[0, 1] == palette[1]).all() and (rgb[1, 0] == palette[3]).all()
    assert (rgb[1, 1] == 0).all()


def test_image_grid_layout_and_errors():
    tile = np.full((8, 10, 3), 7, np.uint8)
    grid = image_grid([[tile, tile], [tile, tile]], pad=2)
    assert grid.shape == (2 * 10 + 2, 2 * 12 + 2, 3)
    assert (grid[2:10, 2:12] == 7).all()
    with pytest.raises(ValueError, match="tile"):
        image_grid([[tile, np.zeros((4, 4, 3), np.uint8)]])
