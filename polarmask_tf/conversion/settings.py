"""The original's test settings for a converted checkpoint: read from its meta["config"], else the
release's defaults (original_checkpoints.md section 4, spec section 5).

meta["config"] is the mmdet v1 config file's Python text. It is never executed: `parse_mmdet_config`
walks its syntax tree and evaluates literals, dict(...) calls, names bound earlier in the file,
string concatenation and unary minus only; anything else reads as unknown (None).
"""

import ast
import dataclasses
import math

from polarmask_tf import config as cfg
from polarmask_tf.conversion import ConversionError
from polarmask_tf.data.coco import Category, LabelMap

COCO_CATEGORIES = (
    (1, "person"), (2, "bicycle"), (3, "car"), (4, "motorcycle"), (5, "airplane"), (6, "bus"), (7, "train"),
    (8, "truck"), (9, "boat"), (10, "traffic light"), (11, "fire hydrant"), (13, "stop sign"),
    (14, "parking meter"), (15, "bench"), (16, "bird"), (17, "cat"), (18, "dog"), (19, "horse"), (20, "sheep"),
    (21, "cow"), (22, "elephant"), (23, "bear"), (24, "zebra"), (25, "giraffe"), (27, "backpack"),
    (28, "umbrella"), (31, "handbag"), (32, "tie"), (33, "suitcase"), (34, "frisbee"), (35, "skis"),
    (36, "snowboard"), (37, "sports ball"), (38, "kite"), (39, "baseball bat"), (40, "baseball glove"),
    (41, "skateboard"), (42, "surfboard"), (43, "tennis racket"), (44, "bottle"), (46, "wine glass"), (47, "cup"),
    (48, "fork"), (49, "knife"), (50, "spoon"), (51, "bowl"), (52, "banana"), (53, "apple"), (54, "sandwich"),
    (55, "orange"), (56, "broccoli"), (57, "carrot"), (58, "hot dog"), (59, "pizza"), (60, "donut"), (61, "cake"),
    (62, "chair"), (63, "couch"), (64, "potted plant"), (65, "bed"), (67, "dining table"), (70, "toilet"),
    (72, "tv"), (73, "laptop"), (74, "mouse"), (75, "remote"), (76, "keyboard"), (77, "cell phone"),
    (78, "microwave"), (79, "oven"), (80, "toaster"), (81, "sink"), (82, "refrigerator"), (84, "book"),
    (85, "clock"), (86, "vase"), (87, "scissors"), (88, "teddy bear"), (89, "hair drier"), (90, "toothbrush"),
)
"""COCO 2017's 80 instance categories (id, name) in id order: the original's class channels 0..79
(mmdet's CocoDataset labels 1..80 follow the sorted category ids)."""

NORMALIZATION_RULES = {
    "caffe_detectron": ((102.9801, 115.9465, 122.7717), (1.0, 1.0, 1.0), False),
    "torch": ((123.675, 116.28, 103.53), (58.395, 57.12, 57.375), True),
}
"""img_norm_cfg (mean, std, to_rgb) of the original's configs -> data.normalization."""
BACKBONE_NORMALIZATION = {"resnet50": "caffe_detectron", "resnet101": "caffe_detectron", "resnext101_64x4d": "torch"}
"""The rule when meta["config"] is absent: caffe2 ResNets (BGR mean) and the pytorch-style ResNeXt."""
HEAD_TYPES = {"FCOS_Instance_Head_MIOU_MSKCTNESS": "fcos", "PolarMask_Head": "polar"}
DEFAULT_TEST_SCALE = (1280, 768)
"""(width, height) of the 1x configs, used when meta["config"] does not say."""


class _Unknown:
    def __repr__(self):
        return "<unknown>"


UNKNOWN = _Unknown()


def _evaluate(node, names):
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.Tuple, ast.List)):
        return (tuple if isinstance(node, ast.Tuple) else list)(_evaluate(e, names) for e in node.elts)
    if isinstance(node, ast.Dict) and None not in node.keys:
        return {_evaluate(k, names): _evaluate(v, names) for k, v in zip(node.keys, node.values, strict=True)}
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict" and not node.args:
        return {kw.arg: _evaluate(kw.value, names) for kw in node.keywords if kw.arg is not None}
    if isinstance(node, ast.Name):
        return names.get(node.id, UNKNOWN)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        value = _evaluate(node.operand, names)
        return -value if isinstance(value, (int, float)) else UNKNOWN
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _evaluate(node.left, names), _evaluate(node.right, names)
        same = (isinstance(left, str) and isinstance(right, str)
                or all(isinstance(v, (int, float)) for v in (left, right)))
        return left + right if same else UNKNOWN
    return UNKNOWN


def parse_mmdet_config(text):
    """The top-level assignments of an mmdet v1 config text as plain values (dicts, lists, tuples,
    numbers, strings; UNKNOWN where an expression is not a literal). Raises ConversionError when
    the text is not Python."""
    try:
        tree = ast.parse(text)
    except SyntaxError as error:
        raise ConversionError("meta['config'] is not a Python config file "
                              f"(line {error.lineno}: {error.msg})") from None
    names = {}
    for statement in tree.body:
        if (isinstance(statement, ast.Assign) and len(statement.targets) == 1
                and isinstance(statement.targets[0], ast.Name)):
            names[statement.targets[0].id] = _evaluate(statement.value, names)
    return names


def _get(tree, *path):
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return None if tree is UNKNOWN else tree


@dataclasses.dataclass
class OriginalSettings:
    """What a checkpoint's meta says, each None when it does not say it."""

    head_prefix: str = None
    """"fcos" or "polar", from model.bbox_head.type."""
    backbone: str = None
    """A config.ModelConfig.backbone name, from model.backbone (type, depth, groups, base_width)."""
    test_scale: tuple = None
    """(width, height) of data.test.img_scale (the stretch size)."""
    keep_ratio: bool = None
    """data.test.resize_keep_ratio (mmdet v1 defaults to True; every PolarMask config sets False)."""
    normalization: str = None
    pre_nms_top_k: int = None
    score_threshold: float = None
    nms_iou_threshold: float = None
    max_detections: int = None
    classes: tuple = None
    """meta["CLASSES"]: the class names of channels 0..C-1."""


def read_settings(meta):
    """OriginalSettings from a checkpoint's meta (parse_mmdet_config of meta["config"], meta["CLASSES"])."""
    settings = OriginalSettings()
    classes = meta.get("CLASSES")
    if isinstance(classes, (list, tuple)) and all(isinstance(c, str) for c in classes):
        settings.classes = tuple(classes)
    text = meta.get("config")
    if not isinstance(text, str):
        return settings
    names = parse_mmdet_config(text)
    head_type = _get(names, "model", "bbox_head", "type")
    if head_type is not None:
        if head_type not in HEAD_TYPES:
            raise ConversionError(f"meta['config'] names the head {head_type!r}: not a PolarMask head "
                                  f"({' or '.join(HEAD_TYPES)})")
        settings.head_prefix = HEAD_TYPES[head_type]
    backbone = _get(names, "model", "backbone") or {}
    kind, depth = backbone.get("type"), backbone.get("depth")
    if kind == "ResNet" and depth in (50, 101):
        settings.backbone = f"resnet{depth}"
    elif kind == "ResNeXt" and depth == 101 and backbone.get("groups") == 64 and backbone.get("base_width") == 4:
        settings.backbone = "resnext101_64x4d"
    elif kind is not None:
        raise ConversionError(f"meta['config'] names the backbone {kind} depth {depth}: supported are ResNet-50, "
                              "ResNet-101 and ResNeXt-101 64x4d")
    scale = _get(names, "data", "test", "img_scale")
    if isinstance(scale, list) and len(scale) == 1:  # mmdet allows a list of scales; one means one
        scale = scale[0]
    if isinstance(scale, (tuple, list)) and len(scale) == 2 and all(isinstance(v, int) for v in scale):
        settings.test_scale = tuple(scale)  # keep_ratio=False: mmcv.imresize to exactly (width, height)
    keep_ratio = _get(names, "data", "test", "resize_keep_ratio")
    settings.keep_ratio = True if keep_ratio is None else bool(keep_ratio)
    norm = _get(names, "data", "test", "img_norm_cfg") or _get(names, "img_norm_cfg")
    if isinstance(norm, dict) and "mean" in norm:
        settings.normalization = _normalization_rule(norm)
    test_cfg = _get(names, "test_cfg") or {}
    settings.pre_nms_top_k = _get(test_cfg, "nms_pre")
    settings.score_threshold = _get(test_cfg, "score_thr")
    settings.nms_iou_threshold = _get(test_cfg, "nms", "iou_thr")
    settings.max_detections = _get(test_cfg, "max_per_img")
    return settings


def _normalization_rule(norm):
    values = (tuple(norm.get("mean", ())), tuple(norm.get("std", (1.0, 1.0, 1.0))), bool(norm.get("to_rgb", True)))
    for rule, (mean, std, to_rgb) in NORMALIZATION_RULES.items():
        if (len(values[0]) == 3 and len(values[1]) == 3 and values[2] == to_rgb
                and all(math.isclose(a, b, abs_tol=1e-4)
                        for a, b in zip(values[0] + values[1], mean + std, strict=True))):
            return rule
    raise ConversionError(f"meta['config'] normalises with img_norm_cfg mean {list(values[0])}, std {list(values[1])}, "
                          f"to_rgb {values[2]}: not one of the original's two rules "
                          "(caffe BGR mean, ImageNet RGB mean/std)")


def label_map(num_classes, classes=None):
    """The converted model's data.coco.LabelMap: COCO's 80 categories with their real ids when the
    model has 80 classes and meta["CLASSES"] (if any) names them (mmdet spells "traffic_light"),
    else labels 1..C with meta's names (or "class k") and ids 1..C."""
    coco_names = tuple(name for _, name in COCO_CATEGORIES)
    if num_classes == len(COCO_CATEGORIES) and (
            classes is None or tuple(c.replace("_", " ") for c in classes) == coco_names):
        return LabelMap(tuple(Category(i + 1, cid, name) for i, (cid, name) in enumerate(COCO_CATEGORIES)))
    if classes is not None and len(classes) != num_classes:
        raise ConversionError(f"meta['CLASSES'] names {len(classes)} classes but the class conv has {num_classes}")
    names = classes or tuple(f"class {k}" for k in range(1, num_classes + 1))
    return LabelMap(tuple(Category(k, k, name) for k, name in enumerate(names, start=1)))


def converted_config(layout, settings, overrides=()):
    """The config.Config that runs a converted checkpoint as the original tested it: stretch to the
    test scale, pad to 128, the original's normalisation, location grid, NMS (+1 areas, IoU > t),
    rescaling and thresholds; train settings for fine-tuning. `overrides` (dotted key=value) last.
    Raises ConversionError when meta contradicts the state dict."""
    if settings.backbone not in (None, layout.backbone):
        raise ConversionError(f"meta['config'] names the backbone {settings.backbone} "
                              f"but the weights are a {layout.backbone}")
    width, height = settings.test_scale or DEFAULT_TEST_SCALE
    normalization = settings.normalization or BACKBONE_NORMALIZATION[layout.backbone]

    def given(value, default):
        return default if value is None else value

    data = {
        "polar": {"num_rays": layout.num_rays, "grid": "original"},
        "model": {"backbone": layout.backbone, "backbone_weights": None, "num_classes": layout.num_classes,
                  "freeze_stem": True, "freeze_batchnorm": True, "box_branch": True},
        "data": {"image_size": [height, width], "resize": "keep_ratio" if settings.keep_ratio else "stretch",
                 "size_divisor": 128, "normalization": normalization},
        "postprocess": {
            "pre_nms_top_k": given(settings.pre_nms_top_k, 1000),
            "score_threshold": float(given(settings.score_threshold, 0.05)),
            "nms_iou_threshold": float(given(settings.nms_iou_threshold, 0.5)),
            "max_detections": given(settings.max_detections, 100),
            "centerness_offset": 0.5, "nms_rule": "greater", "nms_plus_one": True,
            "box_source": "box_branch", "rescale": "original",
        },
    }
    try:
        # The box-branch override alone first, so that its refusal names the reason rather than the
        # box_source it contradicts.
        box_overrides = [o for o in overrides if o.partition("=")[0].strip() == "model.box_branch"]
        if not cfg.apply_overrides(cfg.Config(), box_overrides).model.box_branch:
            raise ConversionError("converted config: model.box_branch=false, but the original's checkpoints always "
                                  "have a box branch (bbox_head.*_reg, scales_bbox): drop the override")
        return cfg.apply_overrides(cfg.from_dict(data), overrides)
    except cfg.ConfigError as error:
        raise ConversionError(f"converted config: {error}") from error


def assumption_notes(settings):
    """Notes on the settings a checkpoint's meta did not give, which converted_config assumed."""
    notes = []
    if settings.test_scale is None:
        width, height = DEFAULT_TEST_SCALE
        notes.append(f"meta has no test scale: assumed the 1x models' {width}x{height} stretch; for the 2x models "
                     "(polar_640_800_2x_*) pass --set data.image_size=[800,1333]")
    if settings.normalization is None:
        notes.append("meta has no img_norm_cfg: assumed the backbone's rule (caffe BGR mean for ResNets, "
                     "ImageNet RGB mean/std for ResNeXt)")
    return notes


def ray_order(layout, settings, requested="auto"):
    """The ray order ("old" or "head") to convert with: `requested` when not "auto", else the head
    naming's. ConversionError when meta's head type contradicts the key naming and nothing was requested."""
    if requested != "auto":
        return requested
    if settings.head_prefix not in (None, layout.head_prefix):
        raise ConversionError(
            f"the keys use the '{layout.head_prefix}_' head naming but meta['config'] names the "
            f"'{settings.head_prefix}' head, whose rays have another order: pass --ray-order old or head"
        )
    return layout.ray_order
