"""Polar geometry: mass centres, ray casting, decoding, rasterisation and mask helpers.

Conventions (the paper's, used everywhere in polarmask_tf):
- Image coordinates are pixels, x to the right, y down. Pixel (row i, column j) has its centre at
  (x=j, y=i), as in OpenCV contours: a contour vertex names the boundary pixel it passes through.
- Ray k of N has angle theta_k = 2*pi*k/N; its vertex is (cx + d_k*cos(theta_k), cy + d_k*sin(theta_k)).
  With y down, k = 0 points right, k = N/4 down, k = N/2 left, k = 3N/4 up.
- A ray that meets no boundary (origin outside the shape) has length MISSING_RAY.

The functions taking polygons and origins are TensorFlow ops (they accept numpy arrays) and are
vectorised over vertices, rays and origins. The mask tracers (`mask_outlines`, `largest_contour`),
`rasterize_reference` and the COCO conversions use numpy/OpenCV and run eagerly only.

A mask's outline (`mask_outlines`) runs along its pixels' outer edges, so that `rasterize` gives the
mask back exactly; the contour through its boundary pixels' centres (`largest_contour`, what
cv2.findContours and the original return) lies half a pixel inside the object.
"""

import cv2
import numpy as np
import tensorflow as tf
from pycocotools import mask as coco_mask

MISSING_RAY = 1e-6
"""Length given to a ray that does not meet the polygon (the original's value)."""

RASTER_TOLERANCE = 1e-3
"""Pixels whose centre lies within this many pixels of a polygon edge count as on the boundary."""

_REFERENCE_SEARCH_OFFSETS = np.array([0, 1, -1, 2, -2, 3, -3])


class GeometryError(ValueError):
    """Invalid geometric input. `reason` is a short machine-readable tag (used to count skips)."""

    def __init__(self, reason, message):
        super().__init__(message)
        self.reason = reason


# --------------------------------------------------------------------------------------------
# Ray index conventions: the one place that knows the original release's orders.


def ray_index_map(num_rays, convention):
    """Index permutation `perm` [N] int32 such that `rays_ours = rays_other[..., perm]`.

    conventions:
      "head":  the original's current code (ray k' at 360k'/N degrees from straight down towards
               the right): k = (N/4 - k') mod N, so perm[k] = (N/4 - k) mod N. 36 rays: (9 - k') mod 36.
      "old":   the original's first released checkpoints (x = cx - d cos, y = cy + d sin):
               k = (N/2 - k_old) mod N. 36 rays: (18 - k_old) mod 36.
      "hflip": rays of a horizontally mirrored image (x -> -x): theta -> pi - theta, k -> (N/2 - k) mod N.
      "vflip": rays of a vertically mirrored image (y -> -y): k -> (-k) mod N.
    All four maps are involutions, so the same `perm` converts in both directions.
    """
    num_rays = int(num_rays)
    quarter = {"head": 4, "old": 2, "hflip": 2}
    if convention == "vflip":
        return (-np.arange(num_rays)) % num_rays
    if convention not in quarter:
        raise ValueError(f"unknown ray convention {convention!r}: use 'head', 'old', 'hflip' or 'vflip'")
    divisor = quarter[convention]
    if num_rays % divisor:
        raise ValueError(f"convention {convention!r} needs a ray count divisible by {divisor}, got {num_rays}")
    return ((num_rays // divisor - np.arange(num_rays)) % num_rays).astype(np.int32)


def to_paper_order(rays, convention):
    """Reorders rays [..., N] given in `convention` (see `ray_index_map`) into this project's order."""
    rays = tf.convert_to_tensor(rays)
    return tf.gather(rays, ray_index_map(rays.shape[-1], convention), axis=-1)


def ray_angles(num_rays):
    """Angles theta_k = 2*pi*k/N, float32 [N], radians."""
    return tf.range(num_rays, dtype=tf.float32) * np.float32(2.0 * np.pi / num_rays)


# --------------------------------------------------------------------------------------------
# Validation


def _as_float(x, dtype=tf.float32):
    return tf.cast(tf.convert_to_tensor(x), dtype)


def _is_concrete(x):
    return isinstance(x, (np.ndarray, list, tuple)) or (tf.is_tensor(x) and tf.executing_eagerly())


def polygon_area(polygon):
    """Signed shoelace area of polygons [..., V, 2] -> [...] float32, pixels^2 (positive when the
    vertices run clockwise on screen, i.e. counter-clockwise with y up). Padding by repeating the
    last vertex leaves the area unchanged."""
    p = _as_float(polygon, tf.float64)
    q = p - p[..., :1, :]
    x, y = q[..., 0], q[..., 1]
    cross = x * tf.roll(y, -1, axis=-1) - tf.roll(x, -1, axis=-1) * y
    return tf.cast(0.5 * tf.reduce_sum(cross, axis=-1), tf.float32)


def _shoelace_area(polygon):
    """polygon_area of one concrete polygon [V, 2] in numpy float64 (no TensorFlow call)."""
    q = np.asarray(polygon, np.float64)
    q = q - q[:1]
    return 0.5 * float(np.sum(q[:, 0] * np.roll(q[:, 1], -1) - np.roll(q[:, 0], -1) * q[:, 1]))


def validate_polygon(polygon, name="polygon", require_area=True):
    """Checks a concrete polygon [V, 2]: at least 3 vertices, finite coordinates and (optionally)
    non-zero area. Raises GeometryError naming `name` and the problem; returns float32 numpy [V, 2]."""
    p = np.asarray(polygon, dtype=np.float64)
    if p.ndim != 2 or p.shape[-1] != 2:
        raise GeometryError("bad_shape", f"{name}: expected vertices of shape [V, 2], got {p.shape}")
    if p.shape[0] < 3:
        raise GeometryError("fewer_than_3_points", f"{name}: {p.shape[0]} vertices, a polygon needs at least 3")
    if not np.all(np.isfinite(p)):
        raise GeometryError("non_finite", f"{name}: NaN or infinite coordinates")
    if require_area and abs(_shoelace_area(p)) < 1e-9:
        raise GeometryError("zero_area", f"{name}: the polygon has zero area")
    return p.astype(np.float32)


# --------------------------------------------------------------------------------------------
# Centres, rays and their decoding


def mass_center(polygon):
    """Area (shoelace) centroid of polygons [..., V, 2] -> [..., 2] float32, pixels.

    Accumulated in float64; where the area vanishes (collinear vertices) the vertex mean is
    returned, as the original does. Padding by repeating the last vertex leaves the area
    centroid unchanged (not the vertex-mean fallback). Concrete inputs are validated: at least 3
    vertices and finite coordinates, else GeometryError.
    """
    if _is_concrete(polygon) and np.ndim(polygon) == 2:
        validate_polygon(polygon, require_area=False)
    p = _as_float(polygon, tf.float64)
    origin = p[..., :1, :]
    q = p - origin
    x, y = q[..., 0], q[..., 1]
    x_next, y_next = tf.roll(x, -1, axis=-1), tf.roll(y, -1, axis=-1)
    cross = x * y_next - x_next * y
    twice_area = tf.reduce_sum(cross, axis=-1, keepdims=True)
    safe = tf.where(tf.abs(twice_area) > 1e-9, twice_area, tf.ones_like(twice_area))
    centroid = tf.stack(
        [tf.reduce_sum((x + x_next) * cross, -1), tf.reduce_sum((y + y_next) * cross, -1)], axis=-1
    ) / (3.0 * safe)
    mean = tf.reduce_mean(q, axis=-2)
    centre = tf.where(tf.abs(twice_area) > 1e-9, centroid, mean) + origin[..., 0, :]
    return tf.cast(centre, tf.float32)


def ray_distances(polygon, origins, num_rays, method="exact"):
    """Ray lengths from each origin to the polygon boundary, float32 [P, N], pixels.

    polygon: [V, 2] shared by all origins, or [P, V, 2], one polygon per origin (pad a polygon by
        repeating its last vertex: degenerate edges are never hit, repeated vertices change no bin).
    origins: [P, 2] (x, y).
    method:
      "exact": ray casting against every edge; the length is the farthest crossing of the ray with
          the boundary (so a ray leaving and re-entering a concave shape reaches its far side), and
          MISSING_RAY when the ray meets nothing (origin outside the shape).
      "reference": the original release's rule on contour vertices (spec section 2 step 11):
          vertices binned by integer degree, the ray's own bin or the nearest of +-1..3 degrees
          that holds a vertex (no wrap-around at the original's 0 degrees, which is straight down),
          farthest vertex in that bin, MISSING_RAY if none. Computed at this project's angles with
          the original's angle measure, so for N = 36 it equals the original's rays reordered by
          `ray_index_map(36, "head")`. Needs 360 % N == 0 and dense contour vertices.
    Both are graph- and XLA-safe.
    """
    if method not in ("exact", "reference"):
        raise ValueError(f"unknown ray method {method!r}: use 'exact' or 'reference'")
    if method == "reference" and 360 % num_rays:
        raise ValueError(f"method='reference' needs 360 % num_rays == 0, got num_rays={num_rays}")
    if _is_concrete(polygon) and np.ndim(polygon) == 2:
        validate_polygon(polygon, "contour" if method == "reference" else "polygon", require_area=method == "exact")
    if _is_concrete(origins) and not np.all(np.isfinite(np.asarray(origins, np.float64))):
        raise GeometryError("non_finite", "origins: NaN or infinite coordinates")
    poly = _as_float(polygon)
    origins = tf.reshape(_as_float(origins), [-1, 2])
    if poly.shape.rank == 2:
        poly = poly[tf.newaxis]
    if method == "reference":
        return _reference_rays(poly, origins, num_rays)
    angles = ray_angles(num_rays)
    ux, uy = tf.cos(angles)[None, :, None], tf.sin(angles)[None, :, None]  # [1, N, 1]
    start = poly - origins[:, None, :]  # edge starts relative to the origin, [P or 1, V, 2]
    edge = tf.roll(poly, -1, axis=-2) - poly
    wx, wy = start[..., 0][:, None, :], start[..., 1][:, None, :]  # [P, 1, V]
    ex, ey = edge[..., 0][:, None, :], edge[..., 1][:, None, :]
    # Solve origin + t*u = start + s*edge with 2-D cross products.
    denom = ux * ey - uy * ex  # [P, N, V]
    safe = tf.where(tf.abs(denom) > 1e-12, denom, tf.ones_like(denom))
    t = (wx * ey - wy * ex) / safe
    s = (wx * uy - wy * ux) / safe
    eps = 1e-5  # accepts crossings exactly at a vertex despite float32 rounding
    hit = (tf.abs(denom) > 1e-12) & (t >= 0.0) & (s >= -eps) & (s <= 1.0 + eps)
    farthest = tf.reduce_max(tf.where(hit, t, tf.zeros_like(t)), axis=-1)
    return tf.maximum(farthest, MISSING_RAY)


def _reference_rays(contours, origins, num_rays):
    """The original's vertex-binning rule at this project's angles.

    contours: float32 [P or 1, V, 2]; origins: float32 [P, 2]. Returns float32 [P, N].
    """
    dx = contours[..., 0] - origins[:, 0:1]  # [P, V]
    dy = contours[..., 1] - origins[:, 1:2]
    # The original's angle: 0 degrees straight down, increasing towards the right, float32 and
    # computed as atan2 * 180 / pi in that order, so that vertices fall in the same integer bins.
    degrees = tf.atan2(dx, dy) * 180.0 / np.float32(np.pi)
    degrees = tf.where(degrees < 0, degrees + 360.0, degrees)
    bins = tf.minimum(tf.cast(degrees, tf.int32), 360)  # 360 only from rounding just below 0
    dist = tf.sqrt(dx * dx + dy * dy)
    num_origins = tf.shape(dist)[0]
    segments = tf.range(num_origins)[:, None] * 361 + bins
    table = tf.math.unsorted_segment_max(
        tf.reshape(dist, [-1]), tf.reshape(segments, [-1]), num_segments=num_origins * 361
    )
    table = tf.reshape(tf.where(table >= 0, table, -1.0), [-1, 361])  # empty bins -> -1
    # Our ray k points at theta_k = 360k/N; in the original's measure that is (90 - theta_k) mod 360.
    target = (90 - np.arange(num_rays) * (360 // num_rays)) % 360
    candidates = target[:, None] + _REFERENCE_SEARCH_OFFSETS[None, :]  # [N, 7]
    in_range = (candidates >= 0) & (candidates < 360)
    values = tf.gather(table, np.clip(candidates, 0, 359), axis=1)  # [P, N, 7]
    found = tf.constant(in_range)[None] & (values >= 0)
    order = tf.range(len(_REFERENCE_SEARCH_OFFSETS))
    first = tf.reduce_min(tf.where(found, order, len(_REFERENCE_SEARCH_OFFSETS)), axis=-1)
    chosen = tf.gather(values, tf.minimum(first, len(_REFERENCE_SEARCH_OFFSETS) - 1), batch_dims=2)
    return tf.where(tf.reduce_any(found, axis=-1), chosen, MISSING_RAY)


def polar_centerness(rays):
    """Polar centerness sqrt(min_k d_k / max_k d_k) of rays [..., N] -> [...] float32 (0 if all 0)."""
    rays = _as_float(rays)
    longest = tf.reduce_max(rays, axis=-1)
    ratio = tf.reduce_min(rays, axis=-1) / tf.where(longest > 0, longest, tf.ones_like(longest))
    return tf.sqrt(tf.where(longest > 0, ratio, tf.zeros_like(ratio)))


def rays_to_polygon(origins, rays, image_shape=None):
    """Decodes rays into polygon vertices: [..., 2] origins and [..., N] lengths -> [..., N, 2] float32.

    image_shape: optional (height, width), or a tensor [..., 2] broadcastable to the origins (one
        extent per image); vertices are then clipped to x in [0, width - 1], y in [0, height - 1].
    """
    origins = _as_float(origins)
    rays = _as_float(rays)
    angles = ray_angles(rays.shape[-1])
    x = origins[..., 0:1] + rays * tf.cos(angles)
    y = origins[..., 1:2] + rays * tf.sin(angles)
    if image_shape is not None:
        extent = _as_float(image_shape)
        height, width = extent[..., 0:1], extent[..., 1:2]
        x = tf.clip_by_value(x, 0.0, width - 1.0)
        y = tf.clip_by_value(y, 0.0, height - 1.0)
    return tf.stack([x, y], axis=-1)


# --------------------------------------------------------------------------------------------
# Rasterisation and masks


def _scanline_cover(crossings, width):
    """Pixels of each row covered by the closed intervals between sorted pairs of crossings.

    crossings: [R, E] x positions (+inf where an edge does not cross the row). Pixel j is covered
    when it lies inside an interval (odd number of crossings to its left) or within
    RASTER_TOLERANCE of a crossing. Returns bool [R, width].
    """
    ordered = tf.sort(crossings, axis=-1)
    columns = tf.range(width, dtype=tf.float32)
    rows = tf.shape(ordered)[0]
    upper = tf.broadcast_to(columns + RASTER_TOLERANCE, [rows, width])
    lower = tf.broadcast_to(columns - RASTER_TOLERANCE, [rows, width])
    left_or_on = tf.searchsorted(ordered, upper, side="right")
    strictly_left = tf.searchsorted(ordered, lower, side="left")
    return (strictly_left % 2 == 1) | (left_or_on > strictly_left)


def rasterize(polygons, height, width):
    """Fills polygons [..., V, 2] (float pixels) into bool masks [..., height, width].

    Rounding rule: pixel (row i, column j) is set when its centre (x=j, y=i) lies inside the
    polygon or on its boundary (within RASTER_TOLERANCE px). There is no half-pixel bias: a mask's
    outline along its pixels' edges (`mask_outlines`) passes 0.5 px from every pixel centre and
    rasterises back to that mask exactly (so does a contour through the boundary pixels' centres,
    for masks without one-pixel-wide parts, but polygons cut from it lose the boundary pixels).
    The original floored the vertices and drew them with cv2.drawContours, which adds about half
    a pixel up and to the left (a radius-20 circle fills 1295 px there, about 1257 here).

    Even-odd scanline fill evaluated twice, once with edges half-open at the top and once at the
    bottom; their union is the closed polygon, so top rows, bottom rows and horizontal edges that
    pass through pixel centres are all included.
    """
    p = _as_float(polygons)
    batch_shape = tf.shape(p)[:-2]
    p = tf.reshape(p, [-1, tf.shape(p)[-2], 2])
    start, end = p, tf.roll(p, -1, axis=-2)
    xa, ya = start[..., 0][:, None, :], start[..., 1][:, None, :]  # [K, 1, V]
    xb, yb = end[..., 0][:, None, :], end[..., 1][:, None, :]
    rows = tf.range(height, dtype=tf.float32)[None, :, None]  # [1, H, 1]
    dy = yb - ya
    x_cross = xa + (rows - ya) * (xb - xa) / tf.where(dy != 0, dy, tf.ones_like(dy))  # [K, H, V]
    low, high = tf.minimum(ya, yb), tf.maximum(ya, yb)
    inf = tf.constant(np.inf, tf.float32)
    masks = None
    for crosses in ((low <= rows) & (rows < high), (low < rows) & (rows <= high)):
        candidates = tf.where(crosses, x_cross, inf)
        covered = _scanline_cover(tf.reshape(candidates, [-1, tf.shape(candidates)[-1]]), width)
        masks = covered if masks is None else masks | covered
    return tf.reshape(masks, tf.concat([batch_shape, [height, width]], axis=0))


def box_masks(polygons, boxes, mask_size):
    """Box-aligned masks, as instance segmentation exports carry them.

    polygons float32 [..., V, 2] and boxes float32 [..., 4] (x1, y1, x2, y2), both in one pixel
    frame. Returns bool [..., M, M], M = mask_size: cell (r, c) covers the box's
    [x1 + c*w/M, x1 + (c+1)*w/M] x [y1 + r*h/M, y1 + (r+1)*h/M] and is set when its centre lies
    inside the polygon (the `rasterize` rule). Polygon parts outside the box are cut off; a box
    with no width or height gives an empty mask. To paste a mask into an image, resize it to the
    box's extent.
    """
    p = _as_float(polygons)
    b = _as_float(boxes)
    origin = b[..., None, :2]
    extent = b[..., None, 2:] - origin
    degenerate = tf.reduce_any(extent <= 0, axis=[-2, -1])
    cell = tf.where(extent > 0, extent, tf.ones_like(extent)) / mask_size
    local = (p - origin) / cell - 0.5  # cell centres at integers, as `rasterize` expects
    masks = rasterize(local, mask_size, mask_size)
    return masks & ~degenerate[..., None, None]


def rasterize_reference(polygon, height, width):
    """The original release's rasterisation, for parity checks: vertices [V, 2] truncated to
    integers, then `cv2.drawContours(..., thickness=-1)` (filled, boundary drawn 8-connected).
    Numpy bool [height, width]; biased by about half a pixel up-left (see `rasterize`)."""
    canvas = np.zeros((int(height), int(width)), np.uint8)
    vertices = np.asarray(polygon, np.float32).astype(np.int32).reshape(-1, 1, 2)
    cv2.drawContours(canvas, [vertices], -1, 1, thickness=-1)
    return canvas.astype(bool)


def mask_iou(masks_a, masks_b):
    """IoU of boolean masks [..., H, W] pairwise by position -> [...] float32 (0 when both are empty)."""
    a = tf.cast(masks_a, tf.bool)
    b = tf.cast(masks_b, tf.bool)
    inter = tf.reduce_sum(tf.cast(a & b, tf.float32), axis=[-2, -1])
    union = tf.reduce_sum(tf.cast(a | b, tf.float32), axis=[-2, -1])
    return tf.where(union > 0, inter / tf.where(union > 0, union, tf.ones_like(union)), tf.zeros_like(union))


def mask_outlines(mask):
    """The boundaries of a 2-D mask along its pixels' outer edges: (parts, holes).

    Pixel (row i, column j) covers [j - 0.5, j + 0.5] x [i - 0.5, i + 0.5], so the outlines have
    half-integer coordinates and every pixel centre lies 0.5 px or more away from them: inside
    for the mask's pixels, outside for the others. Hence `rasterize_outlines(parts + holes)` is the
    mask exactly, and `rasterize(part)` is exactly the pixels of that part with its holes filled.

    parts: the outer outline of every 8-connected part (pixels touching at a corner are one part,
        whose outline passes twice through that corner), largest area first.
    holes: the outline of every hole (background enclosed by a part, 4-connected: background
        pixels touching at a corner are two holes), largest area first. A part inside a hole is
        a part of its own.
    Each is float32 [V, 2] (x, y), vertices at the corners only (no two consecutive edges
    collinear). The shoelace area of a part is its pixel count plus its holes', its area centroid
    the mean of those pixels' centres. An empty mask gives ([], []).

    Traced with cv2.findContours on a grid of 2H + 1 by 2W + 1 cells (plus a margin) in which pixel
    (i, j) is the 3 x 3 block of cells centred at (2i + 1, 2j + 1), so that the grid's boundary
    cells are the pixels' edges and corners; OpenCV's 8-connected tracing cuts concave corners
    diagonally, and each such step is replaced by the two edges through the corner it skipped.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise GeometryError("bad_shape", f"mask: expected a 2-D array, got shape {mask.shape}")
    rows = np.flatnonzero((mask != 0).any(axis=1))
    if rows.size == 0:
        return [], []
    cols = np.flatnonzero((mask != 0).any(axis=0))
    (y0, y1), (x0, x1) = (rows[0], rows[-1] + 1), (cols[0], cols[-1] + 1)
    crop = mask[y0:y1, x0:x1] != 0
    # Cell 2 * k + 2 of the grid is pixel k (one margin cell on each side); cell c is at c / 2 - 1.
    grid = np.zeros((2 * crop.shape[0] + 3, 2 * crop.shape[1] + 3), np.uint8)
    grid[2:-1:2, 2:-1:2] = crop
    grid = cv2.dilate(grid, np.ones((3, 3), np.uint8))
    contours, hierarchy = cv2.findContours(grid, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)[-2:]
    parts, holes = [], []
    for contour, (_, _, _, parent) in zip(contours, hierarchy.reshape(-1, 4), strict=True):
        cells = _pixel_edge_path(contour.reshape(-1, 2).astype(np.int64), grid)
        outline = (cells / 2.0 - 1.0 + np.array([x0, y0])).astype(np.float32)
        (holes if parent >= 0 else parts).append(outline)
    return _largest_first(parts), _largest_first(holes)


def _pixel_edge_path(cells, grid):
    """A closed 8-connected path of grid cells [V, 2] (x, y) -> its corners along 4-connected steps.

    A diagonal step passes between two cells, exactly one of which is set (the grid's blocks never
    meet diagonally alone); the path is routed through the set one, then collinear vertices dropped.
    """
    step = np.roll(cells, -1, axis=0) - cells
    diagonal = np.flatnonzero((step[:, 0] != 0) & (step[:, 1] != 0))
    across = cells[diagonal] + step[diagonal] * np.array([1, 0])
    down = cells[diagonal] + step[diagonal] * np.array([0, 1])
    corner = np.where((grid[across[:, 1], across[:, 0]] != 0)[:, None], across, down)
    cells = np.insert(cells, diagonal + 1, corner, axis=0)
    incoming = cells - np.roll(cells, 1, axis=0)
    outgoing = np.roll(cells, -1, axis=0) - cells
    turns = incoming[:, 0] * outgoing[:, 1] - incoming[:, 1] * outgoing[:, 0] != 0
    return cells[turns]


def _largest_first(outlines):
    """Outlines sorted by decreasing |shoelace area| (stable: ties keep OpenCV's order)."""
    return sorted(outlines, key=lambda p: abs(_shoelace_area(p)), reverse=True)


def rasterize_outlines(outlines, height, width):
    """The even-odd fill of several outlines (a list of [V_i, 2]): bool [height, width], a pixel set
    when its centre lies inside or on an odd number of them (`rasterize`'s rule per outline), so
    that holes cut out of their parts: `rasterize_outlines(parts + holes)` of `mask_outlines` is
    the mask."""
    outlines = [np.asarray(p, np.float32) for p in outlines]
    if not outlines:
        return np.zeros((int(height), int(width)), bool)
    longest = max(len(p) for p in outlines)
    padded = np.stack([np.concatenate([p, np.repeat(p[-1:], longest - len(p), axis=0)]) for p in outlines])
    filled = rasterize(padded, int(height), int(width)).numpy()
    return np.logical_xor.reduce(filled, axis=0)


def outer_contours(mask):
    """Outer contours of a 2-D mask through its boundary pixels' CENTRES (the original's kind of
    contour, half a pixel inside the object; `mask_outlines` traces the pixels' edges), largest
    area first: list of float32 [V, 2] (x, y). Works with OpenCV 3 (3 return values) and 4/5 (2)."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise GeometryError("bad_shape", f"mask: expected a 2-D array, got shape {mask.shape}")
    found = cv2.findContours(
        np.ascontiguousarray(mask != 0, dtype=np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE
    )
    contours = found[-2]
    contours = sorted(contours, key=lambda c: (cv2.contourArea(c), len(c)), reverse=True)
    return [c.reshape(-1, 2).astype(np.float32) for c in contours]


def largest_contour(mask):
    """The outer contour of largest area of a 2-D mask, float32 [V, 2] (x, y) through the
    boundary pixels' centres (see `outer_contours`).

    Raises GeometryError("empty_mask") when the mask has no pixel set. A single pixel or a
    one-pixel-wide line gives a contour with fewer than 3 vertices or zero area; callers that
    cast rays validate it.
    """
    contours = outer_contours(mask)
    if not contours:
        raise GeometryError("empty_mask", "mask: no pixel is set")
    return contours[0]


# --------------------------------------------------------------------------------------------
# COCO segmentations


RLE_MAX_CHARS_PER_COUNT = 7
"""A compressed RLE count takes at most this many characters (35 bits: any uint32 with its sign bit);
pycocotools' decoder overflows on longer ones."""


def _is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def decode_rle_string(counts):
    """The run lengths of a COCO compressed RLE string (str or ASCII bytes), as Python ints.

    The format (pycocotools' rleToString): each count is written in 5-bit groups, least significant
    first, one character per group: chr(48 + group | 0x20 if more groups follow). The last group's
    0x10 bit is the sign, extended over the bits above it. Counts from the fourth on (index i > 2)
    are stored as the difference to the count two before them (the same colour's previous run).
    The decoded values are returned as they are (possibly negative or huge); GeometryError
    "bad_rle_counts" for characters outside '0'..'o', a count longer than RLE_MAX_CHARS_PER_COUNT
    characters, or a string that ends inside a count.
    """
    if isinstance(counts, (bytes, bytearray)):
        try:
            counts = counts.decode("ascii")
        except UnicodeDecodeError:
            raise GeometryError("bad_rle_counts", "RLE counts: not ASCII") from None
    values = []
    value = shift = 0
    for position, char in enumerate(counts):
        group = ord(char) - 48
        if not 0 <= group < 64:
            raise GeometryError("bad_rle_counts", f"RLE counts: character {char!r} at {position} is not in '0'..'o'")
        value |= (group & 0x1F) << shift
        shift += 5
        if group & 0x20:
            if shift >= 5 * RLE_MAX_CHARS_PER_COUNT:
                raise GeometryError("bad_rle_counts",
                                    f"RLE counts: count {len(values)} overflows (too many characters)")
            continue
        if group & 0x10:
            value -= 1 << shift
        if len(values) > 2:
            value += values[-2]
        values.append(value)
        value = shift = 0
    if shift:
        raise GeometryError("bad_rle_counts", "RLE counts: the string ends inside a count")
    return values


def check_rle(segmentation, height, width):
    """Checks a COCO RLE dict without decoding it in pycocotools; raises GeometryError.

    Reasons: "bad_segmentation" (no "size" or "counts"), "bad_rle_size" (size is not two
    non-negative ints), "rle_size_mismatch" (size is not [height, width]), "bad_rle_counts"
    (counts neither a list of ints nor a compressed string, unparseable, or a negative count) and
    "rle_counts_sum_mismatch" (counts do not sum to height * width: pycocotools would decode
    uninitialised memory or write past the mask).
    """
    size = segmentation.get("size")
    counts = segmentation.get("counts")
    if size is None or counts is None:
        raise GeometryError("bad_segmentation", "RLE segmentation needs 'size' and 'counts'")
    if not isinstance(size, (list, tuple)) or len(size) != 2 or not all(_is_int(v) and v >= 0 for v in size):
        raise GeometryError("bad_rle_size", f"RLE size {size!r:.40} is not two non-negative integers")
    if [int(v) for v in size] != [int(height), int(width)]:
        raise GeometryError(
            "rle_size_mismatch", f"RLE size {list(size)} does not match the image size [{height}, {width}]"
        )
    if isinstance(counts, (list, tuple)):
        if not all(_is_int(v) for v in counts):
            raise GeometryError("bad_rle_counts", "RLE counts: a list with non-integer entries")
        values = [int(v) for v in counts]
    elif isinstance(counts, (str, bytes)):
        values = decode_rle_string(counts)
    else:
        raise GeometryError("bad_rle_counts", f"RLE counts of type {type(counts).__name__}")
    if any(v < 0 for v in values):
        raise GeometryError("bad_rle_counts", "RLE counts: a negative count")
    total = sum(values)
    if total != int(height) * int(width):
        raise GeometryError("rle_counts_sum_mismatch",
                            f"RLE counts sum to {total}, not height * width = {int(height) * int(width)}")


def _coco_rle(segmentation, height, width):
    check_rle(segmentation, height, width)
    if isinstance(segmentation["counts"], (list, tuple)):
        return coco_mask.frPyObjects(
            {"size": [int(height), int(width)], "counts": [int(v) for v in segmentation["counts"]]},
            int(height), int(width))
    return segmentation


def _coco_polygon_parts(segmentation):
    parts = []
    for index, flat in enumerate(segmentation):
        coords = np.asarray(flat, dtype=np.float64)
        if coords.ndim != 1 or coords.size % 2:
            raise GeometryError("bad_segmentation", f"polygon part {index}: odd number of coordinates")
        parts.append(validate_polygon(coords.reshape(-1, 2), name=f"polygon part {index}"))
    if not parts:
        raise GeometryError("bad_segmentation", "empty polygon list")
    return parts


def coco_segmentation_to_polygons(segmentation, height, width):
    """COCO segmentation -> polygon parts, a list of float32 [V, 2] (x, y) arrays.

    Polygon lists are returned part by part as given (each checked: 3+ vertices, finite, non-zero
    area), in COCO's frame. RLE (compressed or uncompressed, its size must equal [height, width],
    checked by check_rle before pycocotools decodes it) is decoded and traced along its pixels'
    outer edges (`mask_outlines`, in this project's frame): the outer outline of each part, largest
    first, so that their fill is exactly the mask's pixels with holes filled, as a COCO polygon
    annotation of the same object would be (polygon parts have no holes). Raises GeometryError
    with a reason.
    """
    if isinstance(segmentation, dict):
        parts, _ = mask_outlines(coco_mask.decode(_coco_rle(segmentation, height, width)))
        if not parts:
            raise GeometryError("empty_mask", "RLE segmentation: no pixel is set")
        return parts
    if isinstance(segmentation, (list, tuple)):
        return _coco_polygon_parts(segmentation)
    raise GeometryError("bad_segmentation", f"segmentation of type {type(segmentation).__name__}")


def coco_segmentation_to_mask(segmentation, height, width):
    """COCO segmentation (polygon list or RLE) -> uint8 mask [height, width] with COCO's own
    polygon rasterisation (pycocotools), as COCO evaluation sees it (annToMask): the polygons'
    coordinates reach pycocotools as given, in float64 (rounded to float32 they would move boundary
    pixels of small objects)."""
    if isinstance(segmentation, dict):
        rle = _coco_rle(segmentation, height, width)
    elif isinstance(segmentation, (list, tuple)):
        _coco_polygon_parts(segmentation)  # the checks
        rles = coco_mask.frPyObjects([[float(v) for v in flat] for flat in segmentation], height, width)
        rle = coco_mask.merge(rles)
    else:
        raise GeometryError("bad_segmentation", f"segmentation of type {type(segmentation).__name__}")
    return coco_mask.decode(rle)
