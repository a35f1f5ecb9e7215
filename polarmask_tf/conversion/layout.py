"""The original's state-dict layout, and its mapping onto this project's Keras model.

Layout (original_checkpoints.md sections 2 and 5): "backbone." (mmdet v1 ResNet / ResNeXt:
conv1, bn1, layer{1..4}.{block}.conv{1,2,3} / bn{1,2,3} / downsample.{0,1}), "neck." (FPN:
lateral_convs.{0,1,2}.conv, fpn_convs.{0..4}.conv) and "bbox_head." (cls/reg/mask_convs.{0..3}.conv
and .gn, {P}_cls, {P}_reg, {P}_mask, {P}_centerness, scales_bbox.{0..4}.scale, scales_mask.{0..4}.scale)
with {P} = "fcos" (FCOS_Instance_Head_MIOU_MSKCTNESS, every released file; rays in the "old"
order) or "polar" (PolarMask_Head, the code after 2019-11-12; the "head" order).

Mapping onto the Keras model (modeling.model.build_model), torch key -> layer / variable:
  backbone.conv1, bn1                        -> backbone_<name>/conv1_conv, conv1_bn
  backbone.layer{s}.{b}.conv{i}, bn{i}       -> conv{s+1}_block{b+1}_{i}_conv, _{i}_bn
  backbone.layer{s}.0.downsample.{0,1}       -> conv{s+1}_block1_0_conv, _0_bn
  neck.lateral_convs.{0,1,2}.conv            -> fpn_lateral_c{3,4,5}
  neck.fpn_convs.{0,1,2,3,4}.conv            -> fpn_output_p{3,4,5}, fpn_p6, fpn_p7
  bbox_head.{cls,reg,mask}_convs.{i}.conv/gn -> head {cls,box,ray}_tower_conv{i} / _gn{i}
  bbox_head.{P}_cls, _centerness, _reg, _mask -> head cls_logits, centerness, box_pred, ray_pred
  bbox_head.scales_bbox / scales_mask.{l}    -> head box_scales[l] / ray_scales[l]
Conv kernels [O, I/groups, kh, kw] become [kh, kw, I/groups, O]; BN weight, bias, running_mean,
running_var become gamma, beta, moving_mean, moving_variance (num_batches_tracked is dropped);
GN weight, bias become gamma, beta; the ray conv's output channels are permuted into this
project's order (geometry.ray_index_map). The keras.applications ResNets give every conv a bias,
which is set to zero (the original's backbone convs have none).
"""

import dataclasses
import re

import numpy as np

from polarmask_tf import geometry
from polarmask_tf.conversion import ConversionError

STAGE_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
RESNEXT_GROUPS = 64
HEAD_PREFIXES = {"fcos": "old", "polar": "head"}
"""Head output naming -> the ray order its code uses (geometry.ray_index_map conventions)."""
BN_KEYS = ("weight", "bias", "running_mean", "running_var")
OPTIONAL_BN_KEY = "num_batches_tracked"
"""A BN buffer the conversion drops; mmdet's caffe2-converted weights have none, so it may be absent."""
TOWERS = {"cls": "cls", "reg": "box", "mask": "ray"}
OUTPUTS = {"cls": "cls_logits", "centerness": "centerness", "reg": "box_pred", "mask": "ray_pred"}


@dataclasses.dataclass(frozen=True)
class Layout:
    """What a state dict holds: backbone (a config.ModelConfig.backbone name), head_prefix ("fcos"
    or "polar"), num_classes and num_rays (from the output conv shapes)."""

    backbone: str
    head_prefix: str
    num_classes: int
    num_rays: int

    @property
    def ray_order(self):
        return HEAD_PREFIXES[self.head_prefix]


def _shape(state, key):
    if key not in state:
        raise ConversionError(f"the state dict has no {key!r}, which every original PolarMask checkpoint has")
    return tuple(state[key].shape)


def inspect(state):
    """The Layout of a state dict ({name: array}, 'module.' stripped), read from its keys and shapes.

    Raises ConversionError for deformable-convolution checkpoints, for a backbone other than
    ResNet-50, ResNet-101 and ResNeXt-101 64x4d, and for a head naming that is neither or both.
    """
    offsets = sorted(k for k in state if "offset" in k)
    if offsets:
        raise ConversionError(
            f"this is a deformable-convolution (DCN) PolarMask checkpoint ({offsets[0]!r} and {len(offsets) - 1} "
            "more offset keys): TensorFlow core has no deformable convolution, so its backbone and head cannot "
            "be computed here; convert a non-DCN model (polar_768_1x_*, polar_640_800_2x_*)"
        )
    prefixes = sorted({m.group(1) for k in state for m in [re.match(r"bbox_head\.(fcos|polar)_", k)] if m})
    if len(prefixes) != 1:
        found = ("both 'bbox_head.fcos_*' and 'bbox_head.polar_*'" if prefixes
                 else "no 'bbox_head.fcos_*' or 'bbox_head.polar_*'")
        raise ConversionError(f"the state dict has {found} keys: not a PolarMask head with one output naming")
    prefix = prefixes[0]
    blocks = []
    for stage in range(1, 5):
        indices = {int(m.group(1)) for k in state for m in [re.match(rf"backbone\.layer{stage}\.(\d+)\.", k)] if m}
        blocks.append(max(indices) + 1 if indices else 0)
    depth = {v: k for k, v in STAGE_BLOCKS.items()}.get(tuple(blocks))
    if depth is None:
        raise ConversionError(
            f"backbone stages with {tuple(blocks)} bottlenecks: supported are ResNet-50 (3, 4, 6, 3) and "
            "ResNet-101 / ResNeXt-101 (3, 4, 23, 3)"
        )
    conv2 = _shape(state, "backbone.layer1.0.conv2.weight")
    if conv2 == (64, 64, 3, 3):
        backbone = f"resnet{depth}"
    elif depth == 101 and conv2 == (256, 256 // RESNEXT_GROUPS, 3, 3):
        backbone = "resnext101_64x4d"
    else:
        raise ConversionError(
            f"backbone.layer1.0.conv2.weight has shape {list(conv2)}: neither a ResNet ([64, 64, 3, 3]) nor a "
            "ResNeXt-101 64x4d ([256, 4, 3, 3])"
        )
    num_classes = _shape(state, f"bbox_head.{prefix}_cls.weight")[0]
    num_rays = _shape(state, f"bbox_head.{prefix}_mask.weight")[0]
    if num_rays % 4:
        raise ConversionError(f"bbox_head.{prefix}_mask has {num_rays} rays; the ray orders need a multiple of 4")
    return Layout(backbone, prefix, num_classes, num_rays)


def _bn(name, channels):
    return {f"{name}.{key}": (channels,) for key in BN_KEYS}


def expected_shapes(layout, fpn_channels=256, head_channels=256, num_convs=4):
    """{torch key: shape} of every tensor a checkpoint of `layout` must hold, in the original's order
    (num_batches_tracked buffers excluded: they are optional and dropped)."""
    shapes = {"backbone.conv1.weight": (64, 3, 7, 7), **_bn("backbone.bn1", 64)}
    resnext = layout.backbone.startswith("resnext")
    blocks = STAGE_BLOCKS[101 if layout.backbone.endswith("101_64x4d") else int(layout.backbone[6:])]
    inputs = 64
    for stage, count in enumerate(blocks, start=1):
        planes = 64 * 2 ** (stage - 1)
        width, groups = (planes * 4, RESNEXT_GROUPS) if resnext else (planes, 1)
        for block in range(count):
            name = f"backbone.layer{stage}.{block}"
            shapes.update({f"{name}.conv1.weight": (width, inputs, 1, 1), **_bn(f"{name}.bn1", width)})
            shapes.update({f"{name}.conv2.weight": (width, width // groups, 3, 3), **_bn(f"{name}.bn2", width)})
            shapes.update({f"{name}.conv3.weight": (planes * 4, width, 1, 1), **_bn(f"{name}.bn3", planes * 4)})
            if block == 0:
                shapes[f"{name}.downsample.0.weight"] = (planes * 4, inputs, 1, 1)
                shapes.update(_bn(f"{name}.downsample.1", planes * 4))
            inputs = planes * 4
    for i, channels in enumerate((512, 1024, 2048)):
        shapes.update({f"neck.lateral_convs.{i}.conv.weight": (fpn_channels, channels, 1, 1),
                       f"neck.lateral_convs.{i}.conv.bias": (fpn_channels,)})
    for i in range(5):
        shapes.update({f"neck.fpn_convs.{i}.conv.weight": (fpn_channels, fpn_channels, 3, 3),
                       f"neck.fpn_convs.{i}.conv.bias": (fpn_channels,)})
    for tower in TOWERS:
        for i in range(num_convs):
            source = fpn_channels if i == 0 else head_channels
            shapes.update({f"bbox_head.{tower}_convs.{i}.conv.weight": (head_channels, source, 3, 3),
                           f"bbox_head.{tower}_convs.{i}.gn.weight": (head_channels,),
                           f"bbox_head.{tower}_convs.{i}.gn.bias": (head_channels,)})
    p = layout.head_prefix
    for output, channels in (("cls", layout.num_classes), ("reg", 4), ("mask", layout.num_rays), ("centerness", 1)):
        shapes.update({f"bbox_head.{p}_{output}.weight": (channels, head_channels, 3, 3),
                       f"bbox_head.{p}_{output}.bias": (channels,)})
    for scales in ("scales_bbox", "scales_mask"):
        shapes.update({f"bbox_head.{scales}.{level}.scale": () for level in range(5)})
    return shapes


def check_state(state, layout):
    """Raises ConversionError naming the first missing key, the unexpected keys or the first shape
    that does not fit `layout`; returns the expected {key: shape}."""
    expected = expected_shapes(layout)
    missing = [k for k in expected if k not in state]
    if missing:
        raise ConversionError(
            f"the state dict lacks {len(missing)} key(s) of the {layout.backbone} PolarMask layout, first "
            f"{missing[0]!r} (shape {list(expected[missing[0]])})"
        )
    extra = [k for k in state if k not in expected and not k.endswith("." + OPTIONAL_BN_KEY)]
    if extra:
        shown = ", ".join(repr(k) for k in extra[:5]) + (f" and {len(extra) - 5} more" if len(extra) > 5 else "")
        raise ConversionError(f"the state dict has key(s) the {layout.backbone} PolarMask layout does not: {shown}")
    for key, shape in expected.items():
        if tuple(state[key].shape) != shape:
            raise ConversionError(f"{key!r} has shape {list(state[key].shape)}, the layout needs {list(shape)}")
    return expected


def _kernel(weight):
    return np.transpose(weight, (2, 3, 1, 0))


def keras_assignments(model, state, layout, ray_order=None):
    """[(keras variable, numpy value)] for every variable of `model` (built from the converted config)
    from a checked state dict. ray_order: "old" or "head" (default: the head naming's own order).
    Raises ConversionError when the model's variables and the state dict do not line up one to one."""
    backbone = model.get_layer(f"backbone_{layout.backbone}")
    head = model.get_layer("head")
    assignments = []

    def conv(layer, weight, bias=None):
        assignments.append((layer.kernel, _kernel(weight)))
        if layer.use_bias:
            assignments.append((layer.bias, np.zeros(layer.bias.shape, np.float32) if bias is None else bias))
        elif bias is not None:
            raise ConversionError(f"{layer.name} has no bias to take the checkpoint's")

    def norm(layer, prefix, batch_norm=True):
        assignments.append((layer.gamma, state[f"{prefix}.weight"]))
        assignments.append((layer.beta, state[f"{prefix}.bias"]))
        if batch_norm:
            assignments.append((layer.moving_mean, state[f"{prefix}.running_mean"]))
            assignments.append((layer.moving_variance, state[f"{prefix}.running_var"]))

    for key in state:
        match = re.fullmatch(r"backbone\.(?:layer(\d)\.(\d+)\.)?(conv|bn|downsample\.)(\d)\.weight", key)
        if not match:
            continue
        stage, block, kind, index = match.groups()
        name = "conv1" if stage is None else f"conv{int(stage) + 1}_block{int(block) + 1}"
        suffix = ("_0" if kind == "downsample." else f"_{index}") if stage is not None else ""
        prefix = key[: -len(".weight")]
        if kind == "conv" or (kind == "downsample." and index == "0"):
            conv(backbone.get_layer(f"{name}{suffix}_conv"), state[key])
        else:
            norm(backbone.get_layer(f"{name}{suffix}_bn"), prefix)
    for i, level in enumerate((3, 4, 5)):
        conv(model.get_layer(f"fpn_lateral_c{level}"), state[f"neck.lateral_convs.{i}.conv.weight"],
             state[f"neck.lateral_convs.{i}.conv.bias"])
    for i, name in enumerate(("fpn_output_p3", "fpn_output_p4", "fpn_output_p5", "fpn_p6", "fpn_p7")):
        conv(model.get_layer(name), state[f"neck.fpn_convs.{i}.conv.weight"], state[f"neck.fpn_convs.{i}.conv.bias"])
    for tower, branch in TOWERS.items():
        for i in range(head.num_convs):
            conv(getattr(head, f"{branch}_tower_conv{i}"), state[f"bbox_head.{tower}_convs.{i}.conv.weight"])
            norm(getattr(head, f"{branch}_tower_gn{i}"), f"bbox_head.{tower}_convs.{i}.gn", batch_norm=False)
    p = layout.head_prefix
    permutation = geometry.ray_index_map(layout.num_rays, ray_order or layout.ray_order)
    for output, name in OUTPUTS.items():
        weight, bias = state[f"bbox_head.{p}_{output}.weight"], state[f"bbox_head.{p}_{output}.bias"]
        if output == "mask":
            weight, bias = weight[permutation], bias[permutation]
        conv(getattr(head, name), weight, bias)
    for scales, variable in (("scales_bbox", head.box_scales), ("scales_mask", head.ray_scales)):
        assignments.append((variable, np.array([state[f"bbox_head.{scales}.{level}.scale"] for level in range(5)],
                                               np.float32)))

    covered = {id(v) for v, _ in assignments}
    uncovered = [v.path for v in model.weights if id(v) not in covered]
    if uncovered or len(covered) != len(assignments):
        raise ConversionError("the Keras model's variables do not match the checkpoint one to one "
                              f"(not set: {uncovered[:3]})")
    for variable, value in assignments:
        if tuple(variable.shape) != tuple(np.shape(value)):
            raise ConversionError(f"{variable.path}: shape {tuple(variable.shape)} "
                                  f"but the checkpoint gives {np.shape(value)}")
    return assignments


def parameter_count(layout):
    """Parameters of the original model (its nn.Parameters: every key but BN running statistics)."""
    return sum(int(np.prod(shape)) for key, shape in expected_shapes(layout).items()
               if not key.endswith((".running_mean", ".running_var")))


def batchnorm_notes(state, layout):
    """Notes on BN statistics that are not what the released models should hold (facts, section 2):
    caffe ResNets with running_mean != 0 or running_var != 1, and num_batches_tracked != 0 (BN was
    frozen in training). Empty for a file that looks as expected."""
    notes = []
    means = [k for k in state if k.startswith("backbone.") and k.endswith(".running_mean")]
    if layout.backbone.startswith("resnet"):
        off = [k for k in means if np.any(state[k] != 0) or np.any(state[k.replace("_mean", "_var")] != 1)]
        if off:
            notes.append(f"{len(off)} of {len(means)} backbone BNs have running statistics other than mean 0 / var 1 "
                         f"(first {off[0][:-len('.running_mean')]}): unexpected for the caffe2 ResNet weights; "
                         "they are converted as they are")
    tracked = [k for k in state if k.endswith("." + OPTIONAL_BN_KEY) and np.any(state[k] != 0)]
    if tracked:
        notes.append(f"{len(tracked)} BNs have num_batches_tracked != 0 (first {tracked[0]}): they were updated "
                     "in training, so the backbone was not frozen as in the original's configs")
    return notes
