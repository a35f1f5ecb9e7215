"""Checking a converted model's ray order on a real image (original_checkpoints.md section 6.4).

The box branch (l, t, r, b) does not depend on any ray convention. At the locations a trained model
is most sure of, the rays pointing right, down, left and up (paper order k = 0, N/4, N/2, 3N/4)
should come out close to the box sides r, b, l, t: a ray from the centre to the outline is at most
the distance to the box side, and for most objects near it. Rays read in a wrong order point
elsewhere and miss by far more. Random weights carry no such signal, so this check is for real
checkpoints.
"""

import numpy as np

from polarmask_tf import geometry

CONVENTIONS = ("old", "head")
"""Ray orders a file can be in (geometry.ray_index_map); the paper's own order is the identity."""
BOX_SIDE_FOR_RAY = (2, 3, 0, 1)
"""Box channels (l, t, r, b) facing the rays at 0, 90, 180 and 270 degrees: r, b, l, t."""


def ray_order_errors(outputs, converted_order, top_k=100):
    """Median relative error |ray - box side| / box side at the `top_k` most confident locations,
    for each order the file might be in: {"old": e, "head": e, "paper": e}.

    outputs: dense model outputs of one image (numpy): cls_logits [1, P, C], centerness [1, P],
    boxes [1, P, 4], rays [1, P, N] in this project's order, converted from `converted_order`.
    """
    scores = (1 / (1 + np.exp(-outputs["cls_logits"][0]))).max(-1) / (1 + np.exp(-outputs["centerness"][0]))
    top = np.argsort(-scores)[:top_k]
    rays, boxes = outputs["rays"][0, top], outputs["boxes"][0, top]
    num_rays = rays.shape[-1]
    raw = rays[:, geometry.ray_index_map(num_rays, converted_order)]  # the maps are involutions
    sides = boxes[:, BOX_SIDE_FOR_RAY]
    quarter = np.arange(4) * num_rays // 4
    errors = {}
    for order in CONVENTIONS + ("paper",):
        paper = raw if order == "paper" else raw[:, geometry.ray_index_map(num_rays, order)]
        errors[order] = float(np.median(np.abs(paper[:, quarter] - sides) / np.maximum(sides, 1e-6)))
    return errors
