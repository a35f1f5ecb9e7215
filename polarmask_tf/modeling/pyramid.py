"""The feature pyramid's geometry, the one place that defines it: levels, strides, the input size
divisor and where each level's locations sit in the image.

    pyramid.STRIDES                        # (8, 16, 32, 64, 128) for P3..P7
    points, levels = pyramid.locations(256, 384, grid="cell_center")   # [P, 2] (x, y), [P]
    pyramid.num_locations(256, 384)        # P

Location (i, j) of the level with stride s sits at x = j*s + offset, y = i*s + offset, with
offset (s - 1) / 2 for grid "cell_center" (the centre of its s x s pixel cell in this project's
pixel-centre frame, symmetric under flips) or s // 2 for grid "original" (the original release).
Locations are flattened row-major per level (x fastest) and levels concatenated P3 -> P7: the
order of the model's outputs and of the targets.
"""

import numpy as np

LEVELS = ("p3", "p4", "p5", "p6", "p7")
STRIDES = (8, 16, 32, 64, 128)
"""Pixels between neighbouring locations of P3..P7."""
SIZE_DIVISOR = STRIDES[-1]
"""Network input heights and widths are multiples of this, so that every level is exactly H/s x W/s."""
GRIDS = ("cell_center", "original")


def grid_offset(stride, grid):
    """x (and y) of the level's first location, pixels (see the module docstring)."""
    if grid not in GRIDS:
        raise ValueError(f"unknown grid {grid!r}: use one of {', '.join(GRIDS)}")
    return (stride - 1) / 2.0 if grid == "cell_center" else float(stride // 2)


def level_shapes(height, width):
    """Feature map sizes [(H // s, W // s)] of P3..P7 for a network input of height x width pixels."""
    return [(int(height) // s, int(width) // s) for s in STRIDES]


def num_locations(height, width):
    """P, the number of locations over all levels for a network input of height x width pixels."""
    return sum(rows * cols for rows, cols in level_shapes(height, width))


def locations(height, width, grid="cell_center"):
    """Location centres of all levels, numpy: points float32 [P, 2] (x, y, pixels) and level
    index int32 [P] (0 = P3)."""
    points, levels = [], []
    for level, ((rows, cols), stride) in enumerate(zip(level_shapes(height, width), STRIDES, strict=True)):
        offset = grid_offset(stride, grid)
        ys, xs = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
        grid_points = np.stack([xs * stride + offset, ys * stride + offset], -1).reshape(-1, 2)
        points.append(grid_points.astype(np.float32))
        levels.append(np.full(len(grid_points), level, np.int32))
    return np.concatenate(points), np.concatenate(levels)
