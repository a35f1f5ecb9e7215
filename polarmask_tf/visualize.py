"""Pictures for people: detections over an image, and the encoded training targets of a pipeline element.

    overlay = draw_detections(image, detections, label_names, score_threshold=0.3, draw_rays=True)
    picture = draw_targets(images[0], {k: v[0] for k, v in targets.items()}, config)

Both return RGB uint8 arrays. Coordinates are this project's pixel frame (pixel (i, j) centred
at (x=j, y=i)), which is also OpenCV's drawing frame; polygons are drawn with 4 bits of subpixel
precision.
"""

import colorsys

import cv2
import numpy as np

from polarmask_tf import geometry
from polarmask_tf.modeling import preprocessing, pyramid

_SHIFT = 4  # subpixel bits for OpenCV drawing
_FONT = cv2.FONT_HERSHEY_SIMPLEX
LEVEL_COLOURS = ((255, 64, 64), (255, 200, 0), (64, 220, 64), (0, 200, 255), (200, 80, 255))
"""RGB colour of the positives of P3..P7 in draw_targets."""


def colour(index):
    """A distinct saturated RGB colour (tuple of 3 ints) for a class label or instance index."""
    hue = (index * 0.618033988749895) % 1.0  # golden-ratio steps keep neighbouring labels apart
    return tuple(int(255 * c) for c in colorsys.hsv_to_rgb(hue, 0.85, 1.0))


def _points(polygon):
    return np.round(np.asarray(polygon, np.float64) * (1 << _SHIFT)).astype(np.int32).reshape(-1, 1, 2)


def _pt(xy):
    """One point (x, y) as the int tuple OpenCV takes with shift=_SHIFT."""
    return tuple(int(v) for v in np.round(np.asarray(xy, np.float64) * (1 << _SHIFT)))


def _line_width(image):
    return max(1, int(round(max(image.shape[:2]) / 400)))


def _label_name(label_names, label):
    if label_names is None:
        return f"class {label}"
    if hasattr(label_names, "get"):
        return str(label_names.get(label, f"class {label}"))
    return str(label_names[label - 1]) if 1 <= label <= len(label_names) else f"class {label}"


def ray_origin(polygon, image_shape=None):
    """The ray origin of a decoded polygon [N, 2] (N even), float64 [2].

    Ray k and ray k + N/2 point in opposite directions, so the origin lies on the segment between
    their vertices; this stays true after any resize of the image (affine maps keep lines), so
    the origin is the least-squares intersection of the N/2 lines through opposite vertices.
    Lines with a vertex on the border of an image of `image_shape` (h, w) are skipped when at
    least two others remain (clipping moved that vertex). Falls back to the vertex mean when N
    is odd or the lines do not meet in one point (all rays ~0).
    """
    polygon = np.asarray(polygon, np.float64)
    n = len(polygon)
    if n % 2 or n < 4:
        return polygon.mean(axis=0)
    start, end = polygon[: n // 2], polygon[n // 2 :]
    direction = end - start
    length = np.linalg.norm(direction, axis=1)
    usable = length > 1e-3
    if image_shape is not None:
        height, width = image_shape[:2]

        def inside(p):
            return (p[:, 0] > 1e-3) & (p[:, 0] < width - 1 - 1e-3) & (p[:, 1] > 1e-3) & (p[:, 1] < height - 1 - 1e-3)

        unclipped = usable & inside(start) & inside(end)
        if np.count_nonzero(unclipped) >= 2:
            usable = unclipped
    if np.count_nonzero(usable) < 2:
        return polygon.mean(axis=0)
    normal = np.stack([-direction[usable, 1], direction[usable, 0]], axis=1) / length[usable, None]
    system = normal.T @ normal
    if np.linalg.cond(system) > 1e6:
        return polygon.mean(axis=0)
    return np.linalg.solve(system, normal.T @ np.sum(normal * start[usable], axis=1))


def _text(canvas, text, anchor, fill, scale, above=False):
    """Text on a filled box in `fill` with its top-left (bottom-left when `above`) at `anchor`
    (x, y), moved inside the canvas where needed. Returns the box height, pixels."""
    thickness = max(1, int(round(scale * 2)))
    (width, height), baseline = cv2.getTextSize(text, _FONT, scale, thickness)
    box_height = height + baseline + 2
    x = int(np.clip(anchor[0], 0, max(canvas.shape[1] - width - 2, 0)))
    y = int(np.clip(anchor[1] - (box_height if above else 0), 0, max(canvas.shape[0] - box_height, 0)))
    cv2.rectangle(canvas, (x, y), (x + width + 2, y + height + baseline + 2), fill, -1)
    ink = (0, 0, 0) if sum(fill) > 380 else (255, 255, 255)
    cv2.putText(canvas, text, (x + 1, y + height + 1), _FONT, scale, ink, thickness, cv2.LINE_AA)
    return box_height


_TAG_TEXT_HEIGHT = 0.02  # tag text height as a fraction of the image's larger side
_TAG_MIN_TEXT_HEIGHT = 12  # pixels; Hershey text below this is hard to read


def tag_font(image_shape):
    """Font scale (float) and stroke thickness (int, pixels) of draw_detections' tags.

    image_shape: (h, w, ...) of the image. The text (cv2.getTextSize height, about the height of
    a digit) is 2 % of max(h, w) tall, and at least 12 pixels: 12 px on a 640 x 480 or 256 x 256
    image, 26 px on a 1280 x 960 one.
    """
    height = max(_TAG_MIN_TEXT_HEIGHT, _TAG_TEXT_HEIGHT * max(image_shape[:2]))
    scale = height / cv2.getTextSize("0", _FONT, 1.0, 1)[0][1]
    return scale, max(1, int(round(scale * 1.6)))


def _axis_overlap(starts, length, lows, highs):
    """Overlap lengths [len(starts), len(lows)] of intervals [s, s + length) with [low, high)."""
    ends = np.minimum(starts[:, None] + length, highs[None, :])
    return np.maximum(ends - np.maximum(starts[:, None], lows[None, :]), 0).astype(np.float64)


def place_labels(anchor_boxes, label_sizes, image_shape):
    """Top-left corners for label rectangles that stay inside the image and do not overlap.

    anchor_boxes: float [n, 4], per label the box [x1, y1, x2, y2] (pixels) of the object it names.
    label_sizes: int [n, 2], per label its rectangle's (width, height), pixels.
    image_shape: (h, w, ...) of the image, pixels.
    Returns int32 [n, 2]: per label the (x, y) of its rectangle's top-left pixel; the rectangle
    covers columns x .. x + width - 1 and rows y .. y + height - 1.

    Labels are placed greedily in the order given (put the most important first); each avoids
    the labels placed before it, and lies inside the image (at x = 0 or y = 0 when it is wider or
    taller than the image). The first of these candidates (each moved inside the image) that
    overlaps no earlier label is taken: above the box's top-left corner, inside the box below
    that corner, above the top-right corner, below the bottom-left corner, inside the box at the
    bottom-left, inside at the top-right, below the bottom-right, inside at the bottom-right.
    When all eight are taken, the label goes to the free position nearest the box (distance
    between the rectangles, then distance from the first candidate), searched among the
    positions flush with an image border or an earlier label, which contain a free position
    whenever there is one. When no position is free, the one with the least overlapped area is
    taken (ties: nearest). The search scores its O(n^2) positions with one matrix product; 100
    labels take about 0.1 s on one CPU core.
    """
    boxes = np.round(np.asarray(anchor_boxes, np.float64).reshape(-1, 4)).astype(np.int64)
    sizes = np.asarray(label_sizes, np.int64).reshape(-1, 2)
    if len(boxes) != len(sizes):
        raise ValueError(f"{len(boxes)} anchor boxes but {len(sizes)} label sizes")
    height, width = (int(v) for v in image_shape[:2])
    positions = np.zeros((len(boxes), 2), np.int32)
    placed = np.zeros((0, 4), np.int64)  # x1, y1, x2, y2 of the labels so far, x2 and y2 exclusive
    for i, ((left, top, right, bottom), (w, h)) in enumerate(zip(boxes, sizes, strict=True)):
        x_max, y_max = max(width - w, 0), max(height - h, 0)
        near = np.array([(left, top - h), (left, top), (right - w, top - h), (left, bottom),
                         (left, bottom - h), (right - w, top), (right - w, bottom), (right - w, bottom - h)])
        near = np.clip(near, 0, [x_max, y_max])
        ox = _axis_overlap(near[:, 0], w, placed[:, 0], placed[:, 2])
        oy = _axis_overlap(near[:, 1], h, placed[:, 1], placed[:, 3])
        free = np.flatnonzero(np.sum(ox * oy, axis=1) == 0)
        if len(free):
            x, y = near[free[0]]
        else:
            # a free label slid left, then up, until it meets the border or a label stays free, at
            # x = 0 or an earlier label's x2 and y = 0 or an earlier label's y2: so these positions
            # hold a free one if there is one. The others are the positions near the box.
            xs = np.unique(np.clip(np.concatenate([[0, x_max, left, right - w], placed[:, 2], placed[:, 0] - w]),
                                   0, x_max))
            ys = np.unique(np.clip(np.concatenate([[0, y_max, top - h, top, bottom - h, bottom], placed[:, 3],
                                                   placed[:, 1] - h]), 0, y_max))
            area = _axis_overlap(xs, w, placed[:, 0], placed[:, 2]) @ _axis_overlap(ys, h, placed[:, 1],
                                                                                    placed[:, 3]).T
            gap_x = np.maximum(np.maximum(left - (xs + w), xs - right), 0)
            gap_y = np.maximum(np.maximum(top - (ys + h), ys - bottom), 0)
            gap = np.hypot(gap_x[:, None], gap_y[None, :])
            drift = np.hypot(xs[:, None] - near[0, 0], ys[None, :] - near[0, 1])
            best = np.lexsort((drift.ravel(), gap.ravel(), area.ravel()))[0]
            x, y = xs[best // len(ys)], ys[best % len(ys)]
        positions[i] = x, y
        placed = np.concatenate([placed, [[x, y, x + w, y + h]]])
    return positions


def _selection(detections, score_threshold):
    """Detections as arrays, and the indices of those drawn (score and finite polygon), lowest
    score first."""
    scores = np.asarray(detections["scores"], np.float32).reshape(-1)
    polygons = np.asarray(detections["polygons"], np.float32)
    polygons = polygons.reshape(len(scores), polygons.shape[-2] if polygons.ndim == 3 else 0, 2)
    classes = np.asarray(detections["classes"]).reshape(-1).astype(int)
    boxes = np.asarray(detections["boxes"], np.float32).reshape(-1, 4)
    drawable = (scores >= score_threshold) & np.isfinite(polygons).all(axis=(1, 2))
    shown = [i for i in np.argsort(scores, kind="stable") if drawable[i]]
    return scores, polygons, classes, boxes, shown


def detection_tags(image_shape, detections, label_names=None, score_threshold=0.3):
    """The "name score" tags draw_detections draws on an image of `image_shape` (h, w, ...).

    detections, label_names, score_threshold: as for draw_detections.
    Returns a dict, one row per drawn detection, highest score first: "index" int [m] (row in
    detections), "text" list of m str, "rect" int32 [m, 4] the tags' [x1, y1, x2, y2] (pixels,
    x2 and y2 exclusive) placed by place_labels, "anchor" float32 [m, 4] the box each tag names
    (the detection's box, or its polygon's bounds when the box is not finite), and "scale",
    "thickness" of the font (tag_font).
    """
    scores, polygons, classes, boxes, shown = _selection(detections, score_threshold)
    order = np.asarray(shown[::-1], np.int64)
    scale, thickness = tag_font(image_shape)
    text_height, baseline, pad = _tag_metrics(scale, thickness)
    texts, sizes, anchors = [], [], []
    for i in order:
        text = f"{_label_name(label_names, classes[i])} {scores[i]:.2f}"
        texts.append(text)
        text_width = cv2.getTextSize(text, _FONT, scale, thickness)[0][0]
        sizes.append((text_width + 2 * pad, text_height + baseline + 2 * pad))
        finite = np.isfinite(boxes[i]).all()
        anchors.append(boxes[i] if finite else np.concatenate([polygons[i].min(0), polygons[i].max(0)]))
    sizes = np.asarray(sizes, np.int32).reshape(-1, 2)
    anchors = np.asarray(anchors, np.float32).reshape(-1, 4)
    corners = place_labels(anchors, sizes, image_shape)
    return {"index": order, "text": texts, "rect": np.concatenate([corners, corners + sizes], axis=1),
            "anchor": anchors, "scale": scale, "thickness": thickness}


def _tag_metrics(scale, thickness):
    """Text height above the baseline, depth below it and padding of every tag, pixels (one height
    for all tags, whatever their letters, so that stacked tags line up)."""
    (_, text_height), baseline = cv2.getTextSize("Hg0", _FONT, scale, thickness)
    return text_height, baseline, max(1, int(round(text_height / 6)))


def _leader(rect, box):
    """End points (x, y) on a tag rectangle [x1, y1, x2, y2) and on its box [x1, y1, x2, y2] of the
    shortest segment between them, and its length, pixels."""
    ends = []
    for low_a, high_a, low_b, high_b in ((rect[0], rect[2] - 1, box[0], box[2]),
                                         (rect[1], rect[3] - 1, box[1], box[3])):
        if high_a < low_b:
            ends.append((high_a, low_b))
        elif high_b < low_a:
            ends.append((low_a, high_b))
        else:  # the projections overlap: go straight across at the middle of the overlap
            middle = (max(low_a, low_b) + min(high_a, high_b)) / 2
            ends.append((middle, middle))
    start, end = np.array([ends[0][0], ends[1][0]], np.float64), np.array([ends[0][1], ends[1][1]], np.float64)
    return start, end, float(np.hypot(*(end - start)))


def draw_detections(image, detections, label_names=None, score_threshold=0.3, draw_rays=False,
                    colour_by="class", alpha=0.45):
    """Detections drawn over an image.

    image: RGB uint8 [h, w, 3]. detections: dict of numpy arrays for that image (inference
    Predictor): boxes [n, 4], scores [n], classes [n] (labels 1..C), polygons [n, N, 2], all in
    original pixels; optionally "centers" [n, 2], the ray origins (otherwise recovered from each
    polygon with ray_origin). label_names: {label: name}, a sequence naming labels 1..C in order,
    or None ("class k"). Detections scoring below score_threshold are left out.
    draw_rays: lines from each ray origin to its polygon's vertices, and the origin as a dot.
    colour_by: "class" (one colour per label) or "instance".
    Returns a new RGB uint8 [h, w, 3]: translucent filled polygons (opacity alpha), outlines, and
    "name score" tags; the highest score is drawn last (on top). Tags are sized by tag_font and
    placed by place_labels (highest score first) so that they do not cover each other; a tag
    that had to move away from its box is joined to it by a thin line.
    """
    if colour_by not in ("class", "instance"):
        raise ValueError(f"unknown colour_by {colour_by!r}: use 'class' or 'instance'")
    canvas = np.ascontiguousarray(image, dtype=np.uint8).copy()
    scores, polygons, classes, boxes, shown = _selection(detections, score_threshold)
    centers = detections.get("centers")
    colours = {i: colour(classes[i] if colour_by == "class" else rank) for rank, i in enumerate(shown[::-1])}

    fill = canvas.copy()
    covered = np.zeros(canvas.shape[:2], np.uint8)
    for i in shown:
        cv2.fillPoly(fill, [_points(polygons[i])], colours[i], cv2.LINE_AA, shift=_SHIFT)
        cv2.fillPoly(covered, [_points(polygons[i])], 1, cv2.LINE_8, shift=_SHIFT)
    blended = cv2.addWeighted(canvas, 1.0 - alpha, fill, alpha, 0.0)
    canvas[covered > 0] = blended[covered > 0]

    width = _line_width(canvas)
    for i in shown:
        cv2.polylines(canvas, [_points(polygons[i])], True, colours[i], width, cv2.LINE_AA, shift=_SHIFT)
        if draw_rays:
            if centers is not None:
                origin = np.asarray(centers[i], np.float64)
            else:
                origin = ray_origin(polygons[i], canvas.shape)
            for vertex in polygons[i]:
                cv2.line(canvas, _pt(origin), _pt(vertex), colours[i], 1, cv2.LINE_AA, shift=_SHIFT)
            cv2.circle(canvas, _pt(origin), (width + 1) << _SHIFT, (255, 255, 255), -1, cv2.LINE_AA, shift=_SHIFT)

    tags = detection_tags(canvas.shape, detections, label_names, score_threshold)
    lowest_first = range(len(tags["index"]) - 1, -1, -1)
    for k in lowest_first:
        start, end, length = _leader(tags["rect"][k], tags["anchor"][k])
        if length > 2 * width:
            cv2.line(canvas, _pt(start), _pt(end), colours[tags["index"][k]], max(1, width // 2), cv2.LINE_AA,
                     shift=_SHIFT)
    text_height, _, pad = _tag_metrics(tags["scale"], tags["thickness"])
    for k in lowest_first:
        paint = colours[tags["index"][k]]
        x1, y1, x2, y2 = (int(v) for v in tags["rect"][k])
        cv2.rectangle(canvas, (x1, y1), (x2 - 1, y2 - 1), paint, -1)
        ink = (0, 0, 0) if sum(paint) > 380 else (255, 255, 255)
        cv2.putText(canvas, tags["text"][k], (x1 + pad, y1 + pad + text_height), _FONT, tags["scale"], ink,
                    tags["thickness"], cv2.LINE_AA)
    return canvas


def denormalize_image(image, rule):
    """Inverse of modeling.preprocessing.normalize_image: network input float32 [h, w, 3] -> RGB uint8.

    rule: a key of preprocessing.NORMALIZATIONS (preprocessing.input_normalization(config)).
    normalize_image is affine per pixel (a channel permutation, scale and offset), so it is
    measured on the zero colour and the three unit colours and inverted, for any rule it knows.
    """
    probes = np.concatenate([np.zeros((1, 3)), np.eye(3)]).astype(np.float32)
    response = np.asarray(preprocessing.normalize_image(probes, rule), np.float64)
    offset, linear = response[0], (response[1:] - response[0]).T  # normalized = linear @ rgb + offset
    rgb = (np.asarray(image, np.float64) - offset) @ np.linalg.inv(linear).T
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def draw_targets(image_input, targets, config, max_polygons=None, draw_rays=True):
    """The encoded targets of one pipeline element, for checking what the network is taught.

    image_input: float32 [Hp, Wp, 3], the normalised, padded network input (data.pipeline).
    targets: that image's targets (numpy or tensors): labels [P], rays [P, N], boxes [P, 4]
      (l, t, r, b), centerness [P]; optionally resized_size [2] (the picture is cropped to it).
    config: config.Config (input normalisation for un-normalising, the location grid).
    max_polygons: draw at most this many instances' polygons (default: all).
    Draws every positive location as a dot coloured by FPN level (LEVEL_COLOURS, counted in a
    legend), and per instance (positives sharing a box target x - l, y - t, x + r, y + b belong to
    the same instance) the ray polygon of its positive with the highest centerness target, in the
    class colour, with its rays when draw_rays. Returns RGB uint8 [h, w, 3].
    """
    picture = denormalize_image(image_input, preprocessing.input_normalization(config))
    height, width = picture.shape[:2]
    points, levels = pyramid.locations(height, width, config.polar.grid)
    labels = np.asarray(targets["labels"]).reshape(-1)
    rays = np.asarray(targets["rays"], np.float32)
    boxes = np.asarray(targets["boxes"], np.float32)
    centerness = np.asarray(targets["centerness"], np.float32).reshape(-1)
    if len(labels) != len(points):
        raise ValueError(f"targets have {len(labels)} locations but a {height} x {width} input has {len(points)}")
    if targets.get("resized_size") is not None:
        rows, cols = (int(v) for v in np.asarray(targets["resized_size"]).reshape(-1))
        picture = picture[:rows, :cols]
    canvas = np.ascontiguousarray(picture)
    positive = np.flatnonzero(labels > 0)

    corners = [points[positive] - boxes[positive, :2], points[positive] + boxes[positive, 2:]]
    instance_boxes = np.round(np.concatenate(corners, axis=1), 2)
    best = {}
    for index, key in zip(positive, map(tuple, instance_boxes), strict=True):
        if key not in best or centerness[index] > centerness[best[key]]:
            best[key] = index
    chosen = sorted(best.values(), key=lambda i: -centerness[i])[:max_polygons]
    polygons = geometry.rays_to_polygon(points[chosen], rays[chosen]).numpy() if chosen else np.zeros((0, 0, 2))
    for index, polygon in zip(chosen, polygons, strict=True):
        paint = colour(int(labels[index]))
        cv2.polylines(canvas, [_points(polygon)], True, paint, 1, cv2.LINE_AA, shift=_SHIFT)
        if draw_rays:
            for vertex in polygon:
                cv2.line(canvas, _pt(points[index]), _pt(vertex), paint, 1, cv2.LINE_AA, shift=_SHIFT)

    for index in positive:
        cv2.circle(canvas, _pt(points[index]), int(2 + levels[index]) << _SHIFT,
                   LEVEL_COLOURS[levels[index] % len(LEVEL_COLOURS)], -1, cv2.LINE_AA, shift=_SHIFT)
    for index in chosen:
        cv2.circle(canvas, _pt(points[index]), int(3 + levels[index]) << _SHIFT, (255, 255, 255), 1, cv2.LINE_AA,
                   shift=_SHIFT)

    counts = np.bincount(levels[positive], minlength=len(pyramid.STRIDES))
    scale = max(0.35, max(canvas.shape[:2]) / 1500)
    y = 0
    for level, count in enumerate(counts):
        y += _text(canvas, f"P{level + 3}: {count}", (0, y), LEVEL_COLOURS[level % len(LEVEL_COLOURS)], scale)
    return canvas
