"""Typed configuration: nested dataclasses with defaults, YAML files, dotted overrides.

    config = load_config("configs/quickstart.yaml", overrides=["polar.num_rays=72"])
    dump_config(config, "model_dir/config.yaml")

A YAML file sets any subset of fields; everything else keeps its default. Unknown keys and values
of the wrong type raise ConfigError naming the dotted key (and the file). Override values are
parsed as YAML scalars or lists (`a.b=8`, `a.c=[1, 2]`, `a.d=null`).
"""

import dataclasses
import types
import typing

import yaml

from polarmask_tf import fileio
from polarmask_tf.modeling import pyramid


class ConfigError(ValueError):
    """A configuration file or override that does not fit the schema."""


@dataclasses.dataclass
class PolarConfig:
    """How instances become dense per-location targets (spec section 2)."""

    num_rays: int = 36
    """Rays per instance; ray k points at 2*pi*k/num_rays (0 = right, num_rays/4 = down)."""
    ray_method: typing.Literal["exact", "reference"] = "exact"
    """"exact" ray casting, or the original release's 1-degree vertex bins ("reference")."""
    center: typing.Literal["mass", "box"] = "mass"
    """Centre of the centre-sampling window: mass centre of the largest part, or box centre."""
    grid: typing.Literal["cell_center", "original"] = "cell_center"
    """Location (i, j) of a level with stride s sits at x = j*s + (s-1)/2 ("cell_center": the
    centre of its s x s pixel cell, symmetric under flips) or x = j*s + s//2 ("original": half a
    pixel right of and below it, as the original release)."""
    regress_ranges: typing.Tuple[typing.Tuple[float, float], ...] = (
        (-1.0, 64.0), (64.0, 128.0), (128.0, 256.0), (256.0, 512.0), (512.0, 1e8))
    """Per level P3..P7 (modeling.pyramid.STRIDES), the inclusive range of max(l, t, r, b) a
    positive location may have, pixels."""
    center_sample_radius: float = 1.5
    """Positives lie within radius * stride of the centre (and inside the box)."""
    positives_per_chunk: int = 64
    """Rays are cast for positives in chunks of this many locations (memory vs. loop trips)."""


@dataclasses.dataclass
class ModelConfig:
    """The network: backbone (C3..C5) -> FPN (P3..P7) -> shared polar head."""

    backbone: typing.Literal["resnet50", "resnet101", "resnext101_64x4d", "mobilenet_v2", "tiny"] = "resnet50"
    """With data.normalization "auto" this also decides the input normalisation."""
    backbone_weights: typing.Optional[str] = None
    """None (random), "imagenet" (downloaded by keras.applications), or a .weights.h5 path."""
    freeze_stem: bool = True
    """Freeze the stem and the first stage (the original's frozen_stages=1)."""
    freeze_batchnorm: bool = True
    """Backbone batch norms stay in inference mode with frozen statistics and affine parameters."""
    num_classes: int = 80
    """Foreground classes C (labels 1..C; 0 is background)."""
    fpn_channels: int = 256
    head_channels: int = 256
    head_convs: int = 4
    """3x3 conv + GroupNorm + ReLU layers in each of the cls, box and ray towers."""
    box_branch: bool = True
    """The head's box branch: a tower of head_convs convs, the 4-channel (l, t, r, b) conv box_pred,
    the per-level box scales, the "boxes" output and the box IoU loss. false removes all of them (a
    third of the head's towers); detection boxes then come from the polygon extent
    (postprocess.box_source "auto" -> "polygon"). The paper's final model has no box branch (COCO
    mask AP 27.5 without it vs 27.7 with it). Regress ranges and centre sampling still use the
    ground-truth boxes either way. true (the default) matches the original's configs and is what
    converted checkpoints have; a checkpoint of one setting does not load into the other."""
    group_norm_groups: int = 32
    prior_prob: float = 0.01
    """Initial foreground probability of the class logits (bias -log((1 - p) / p))."""


@dataclasses.dataclass
class DataConfig:
    """Input pipeline (data.pipeline.build_dataset)."""

    train_files: str = "data/synthetic/tfrecords/train-*.tfrecord"
    """Glob of training TFRecord shards (polarmask-create-tfrecords)."""
    val_files: str = "data/synthetic/tfrecords/val-*.tfrecord"
    image_size: typing.Tuple[int, int] = (512, 512)
    """(height, width) the image is resized into; padded up to multiples of size_divisor."""
    resize: typing.Literal["keep_ratio", "stretch"] = "keep_ratio"
    """keep_ratio: fit inside image_size keeping the aspect ratio; stretch: exactly image_size (the original)."""
    size_divisor: int = 128
    normalization: typing.Literal["auto", "caffe", "caffe_detectron", "torch", "tf"] = "auto"
    """Input normalisation (data.pipeline.NORMALIZATIONS); "auto": the rule model.backbone's
    pretrained weights need (data.pipeline.BACKBONE_NORMALIZATION)."""
    scale_range: typing.Optional[typing.Tuple[float, float]] = None
    """Multi-scale training: image_size is multiplied by a factor drawn uniformly from this range."""
    hflip_prob: float = 0.5
    photometric_jitter: bool = False
    """Random brightness, contrast, saturation and hue when training."""
    max_instances: int = 100
    """Instances per image after padding; the largest are kept when an image has more."""
    max_vertices: int = 128
    """Vertices of each instance's largest polygon part (padded, or subsampled when longer)."""
    jit_targets: bool = True
    """Encode targets with XLA inside the tf.data map (one compilation per padded image shape)."""
    batch_size: int = 4
    """Global batch size (split across replicas)."""
    shuffle_buffer: int = 256
    deterministic: bool = False
    seed: int = 0


@dataclasses.dataclass
class TrainConfig:
    """Optimisation and the training loop (polarmask_tf.training)."""

    total_steps: int = 90000
    base_learning_rate: float = 0.01
    """Learning rate after warm-up, for data.batch_size images per step."""
    warmup_steps: int = 500
    warmup_factor: float = 0.3333333333
    """The learning rate rises linearly from base * warmup_factor to base over warmup_steps."""
    decay_steps: typing.Tuple[int, ...] = (60000, 80000)
    """Steps at which the learning rate is multiplied by decay_factor."""
    decay_factor: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    """Decoupled weight decay (SGDW); biases and normalisation parameters are excluded."""
    clip_norm: float = 35.0
    """Global gradient norm clipping; 0 disables it."""
    mixed_precision: typing.Optional[typing.Literal["mixed_float16", "mixed_bfloat16"]] = None
    """Keras mixed-precision policy; losses, boxes and rays stay float32; float16 uses loss scaling."""
    jit_polar_iou: bool = True
    """Compile the Polar IoU loss with XLA (in its own tf.function)."""
    init_checkpoint: typing.Optional[str] = None
    """Weights to start from when the model dir has no checkpoint yet: a model dir (or a ckpt-N
    prefix in one) holding config.yaml, written by training or polarmask-convert-original. The network
    must be the same except model.num_classes; when that differs, the class-logit conv keeps its
    fresh initialisation (prior_prob) and every other variable is copied (fine-tuning)."""
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    eval_every: int = 0
    """Steps between COCO evaluations during training (0: never); needs eval_annotations."""
    eval_annotations: typing.Optional[str] = None
    """COCO instances json of the evaluation images (e.g. the synthetic or coco_mini val split)."""
    eval_images_dir: typing.Optional[str] = None
    eval_max_images: typing.Optional[int] = None
    log_every: int = 20
    """Steps between TensorBoard scalar writes."""


@dataclasses.dataclass
class PostprocessConfig:
    """Inference: dense outputs -> scored, class-aware-NMSed detections (polarmask_tf.postprocess)."""

    pre_nms_top_k: int = 1000
    """Locations kept per level, ranked by max_c sigmoid(cls_c) * sigmoid(centerness)."""
    score_threshold: float = 0.05
    """A (location, class) pair is a candidate when sigmoid(cls_c) alone exceeds this."""
    centerness_offset: float = 0.5
    """Score = sigmoid(cls_c) * (sigmoid(centerness) + offset); the original's hard-coded 0.5."""
    max_candidates: int = 2000
    """Static cap on candidates entering NMS (the highest-scoring are kept); the original had none."""
    nms_iou_threshold: float = 0.5
    nms_rule: typing.Literal["greater", "greater_equal"] = "greater"
    """Suppress at IoU > threshold (the original's CUDA kernel, tf.image NMS) or >= (its CPU kernel)."""
    nms_plus_one: bool = False
    """IoU with (x2 - x1 + 1)(y2 - y1 + 1) areas and +1 overlaps, as the original (mmdet v1)."""
    box_source: typing.Literal["auto", "box_branch", "polygon"] = "auto"
    """Detection boxes (used by NMS and returned): the box branch, or the extent of the polygon;
    "auto": the box branch when the model has one (model.box_branch), else the polygon.
    "box_branch" with model.box_branch false is refused."""
    rescale: typing.Literal["pixel_centers", "original"] = "pixel_centers"
    """Back to original pixels: x = (x' + 0.5) / sx - 0.5 (this project's resize), or x' / sx (the original)."""
    max_detections: int = 100
    """K, the static number of detection slots per image."""


@dataclasses.dataclass
class SyntheticConfig:
    """The built-in synthetic shapes dataset (polarmask_tf.data.synthetic)."""

    output_dir: str = "data/synthetic"
    num_images: int = 200
    seed: int = 0
    val_fraction: float = 0.2
    min_size: int = 192
    max_size: int = 320


@dataclasses.dataclass
class Config:
    """Everything a run needs; one section per component."""

    polar: PolarConfig = dataclasses.field(default_factory=PolarConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    postprocess: PostprocessConfig = dataclasses.field(default_factory=PostprocessConfig)
    synthetic: SyntheticConfig = dataclasses.field(default_factory=SyntheticConfig)


def _type_name(tp):
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value, tp, key):
    """Checks `value` against the annotation `tp` and returns it converted (ints widen to floats,
    lists to tuples, dicts to dataclasses)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping for section {tp.__name__}, got {value!r}")
        return _from_dict(tp, value, key)
    if origin is typing.Union or origin is types.UnionType:
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _convert(value, option, key)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {value!r} fits none of {_type_name(tp)}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {list(args)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{key}: expected {len(args)} items, got {len(value)}")
            return tuple(_convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
        item = args[0] if args else typing.Any
        items = [_convert(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if tp is typing.Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:  # YAML 1.1 reads exponents without a dot ("1e8") as strings
            return float(value)
        except ValueError:
            pass
    if tp in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{key}: expected {tp.__name__}, got the boolean {value!r}")
    if not isinstance(value, tp):
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    return value


def _from_dict(cls, data, prefix=""):
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for name in data:
        if name not in hints:
            where = f"{prefix}.{name}" if prefix else name
            raise ConfigError(f"unknown key {where!r}; {cls.__name__} has: {', '.join(names)}")
    values = {name: _convert(value, hints[name], f"{prefix}.{name}" if prefix else name)
              for name, value in data.items()}
    return cls(**values)


REMOVED_KEYS = {"polar.strides": list(pyramid.STRIDES)}
"""Keys that no longer exist because they had one legal value (config.yaml files of older runs still
hold them): accepted with that value and dropped, refused with any other."""


def _drop_removed_keys(data):
    data = {section: dict(values) if isinstance(values, dict) else values for section, values in data.items()}
    for dotted, legal in REMOVED_KEYS.items():
        section, key = dotted.split(".")
        if isinstance(data.get(section), dict) and key in data[section]:
            value = data[section].pop(key)
            if list(value) != legal:
                raise ConfigError(f"{dotted} no longer exists: the pyramid is always P3..P7 with strides {legal} "
                                  f"(modeling.pyramid), got {value!r}")
    return data


def from_dict(data, cls=Config):
    """Builds `cls` from a nested dict; missing keys keep their defaults. A Config is validated
    (validate), so nothing the model or the pipeline cannot honour loads."""
    data = _drop_removed_keys(data or {}) if cls is Config else data or {}
    config = _from_dict(cls, data)
    if cls is Config:
        validate(config)
    return config


def _problems(config):
    """(dotted key, what is wrong) for every value of `config` that would fail later, or silently
    do something else than asked."""
    polar, model, data, train, post = config.polar, config.model, config.data, config.train, config.postprocess
    levels = len(pyramid.STRIDES)
    if polar.num_rays < 3:
        yield "polar.num_rays", f"needs at least 3 rays, got {polar.num_rays}"
    elif data.hflip_prob > 0 and polar.num_rays % 2:
        yield "polar.num_rays", (f"{polar.num_rays} is odd, but horizontal flips (data.hflip_prob={data.hflip_prob}) "
                                 "map ray k to ray N/2 - k: use an even count or data.hflip_prob=0")
    if len(polar.regress_ranges) != levels:
        yield "polar.regress_ranges", (f"needs one (low, high) per level P3..P7 ({levels}), "
                                       f"got {len(polar.regress_ranges)}")
    else:
        for i, (low, high) in enumerate(polar.regress_ranges):
            if not low < high:
                yield f"polar.regress_ranges[{i}]", f"low {low} must be below high {high}"
        lows = [low for low, _ in polar.regress_ranges]
        if lows != sorted(lows):
            yield "polar.regress_ranges", f"must rise from P3 to P7 (coarser levels take larger objects), got {lows}"
    if polar.center_sample_radius <= 0:
        yield "polar.center_sample_radius", f"must be positive, got {polar.center_sample_radius}"
    if polar.positives_per_chunk < 1:
        yield "polar.positives_per_chunk", f"must be at least 1, got {polar.positives_per_chunk}"

    if model.backbone == "tiny" and model.backbone_weights is not None:
        yield "model.backbone_weights", "backbone 'tiny' has no pretrained weights: use null"
    if model.backbone == "resnext101_64x4d" and model.backbone_weights == "imagenet":
        yield "model.backbone_weights", ("keras.applications has no ImageNet ResNeXt: convert an original "
                                         "checkpoint (polarmask-convert-original) or give a .weights.h5 file")
    for key in ("num_classes", "fpn_channels", "head_channels", "group_norm_groups"):
        if getattr(model, key) < 1:
            yield f"model.{key}", f"must be at least 1, got {getattr(model, key)}"
    if model.head_channels >= 1 and model.group_norm_groups >= 1 and model.head_channels % model.group_norm_groups:
        yield "model.head_channels", (f"{model.head_channels} is not divisible by model.group_norm_groups="
                                      f"{model.group_norm_groups} (GroupNorm splits the channels evenly)")
    if model.head_convs < 0:
        yield "model.head_convs", f"must be 0 or more, got {model.head_convs}"
    if not 0 < model.prior_prob < 1:
        yield "model.prior_prob", f"must lie in (0, 1), got {model.prior_prob}"
    if not model.box_branch and post.box_source == "box_branch":
        yield "postprocess.box_source", ("'box_branch' needs the box branch, but model.box_branch is false: use "
                                         "'auto' or 'polygon' (boxes from the polygon extent)")

    if min(data.image_size) < 1:
        yield "data.image_size", f"needs positive (height, width), got {list(data.image_size)}"
    if data.size_divisor < 128 or data.size_divisor % 128:
        yield "data.size_divisor", (f"must be a multiple of 128 (the P7 stride: every level must be exactly "
                                    f"H/s x W/s), got {data.size_divisor}")
    if data.scale_range is not None and not 0 < data.scale_range[0] <= data.scale_range[1]:
        yield "data.scale_range", f"needs 0 < low <= high, got {list(data.scale_range)}"
    if not 0 <= data.hflip_prob <= 1:
        yield "data.hflip_prob", f"must lie in [0, 1], got {data.hflip_prob}"
    for key, least in (("max_instances", 1), ("max_vertices", 3), ("batch_size", 1), ("shuffle_buffer", 1)):
        if getattr(data, key) < least:
            yield f"data.{key}", f"must be at least {least}, got {getattr(data, key)}"

    for key, least in (("total_steps", 0), ("warmup_steps", 0), ("checkpoint_every", 1), ("keep_checkpoints", 1),
                       ("eval_every", 0), ("log_every", 1)):
        if getattr(train, key) < least:
            yield f"train.{key}", f"must be at least {least}, got {getattr(train, key)}"
    if train.base_learning_rate <= 0:
        yield "train.base_learning_rate", f"must be positive, got {train.base_learning_rate}"
    if not 0 < train.warmup_factor <= 1:
        yield "train.warmup_factor", f"must lie in (0, 1], got {train.warmup_factor}"
    if list(train.decay_steps) != sorted(set(train.decay_steps)) or any(step < 1 for step in train.decay_steps):
        yield "train.decay_steps", f"must be positive and strictly increasing, got {list(train.decay_steps)}"
    if not 0 < train.decay_factor <= 1:
        yield "train.decay_factor", f"must lie in (0, 1], got {train.decay_factor}"
    if not 0 <= train.momentum < 1:
        yield "train.momentum", f"must lie in [0, 1), got {train.momentum}"
    for key in ("weight_decay", "clip_norm"):
        if getattr(train, key) < 0:
            yield f"train.{key}", f"must be 0 or more, got {getattr(train, key)}"
    if train.eval_every and not (train.eval_annotations and train.eval_images_dir):
        yield "train.eval_every", "needs train.eval_annotations and train.eval_images_dir"
    if train.eval_max_images is not None and train.eval_max_images < 1:
        yield "train.eval_max_images", f"must be at least 1 (or null), got {train.eval_max_images}"

    for key in ("pre_nms_top_k", "max_candidates", "max_detections"):
        if getattr(post, key) < 1:
            yield f"postprocess.{key}", f"must be at least 1, got {getattr(post, key)}"
    if not 0 <= post.score_threshold <= 1:
        yield "postprocess.score_threshold", f"must lie in [0, 1], got {post.score_threshold}"
    if not 0 < post.nms_iou_threshold <= 1:
        yield "postprocess.nms_iou_threshold", f"must lie in (0, 1], got {post.nms_iou_threshold}"
    if post.centerness_offset < 0:
        yield "postprocess.centerness_offset", f"must be 0 or more, got {post.centerness_offset}"

    synthetic = config.synthetic
    if synthetic.num_images < 1:
        yield "synthetic.num_images", f"must be at least 1, got {synthetic.num_images}"
    if not 0 <= synthetic.val_fraction < 1:
        yield "synthetic.val_fraction", f"must lie in [0, 1), got {synthetic.val_fraction}"
    if not 64 <= synthetic.min_size <= synthetic.max_size:
        yield "synthetic.min_size", f"needs 64 <= min_size <= max_size, got {synthetic.min_size}, {synthetic.max_size}"


def validate(config):
    """Raises ConfigError listing every key (dotted) whose value the model or the pipeline cannot
    honour, with the reason."""
    problems = [f"{key}: {reason}" for key, reason in _problems(config)]
    if problems:
        raise ConfigError("; ".join(problems))


def to_dict(config):
    """The config as plain nested dicts and lists (YAML-ready)."""

    def plain(value):
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    return plain(config)


def apply_overrides(config, overrides):
    """Returns a copy of `config` with dotted `key=value` overrides applied, in order."""
    data = to_dict(config)
    for override in overrides or ():
        key, sep, text = override.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {override!r}: expected key=value, e.g. polar.num_rays=72")
        node = data
        parts = key.split(".")
        for depth, part in enumerate(parts):
            if not isinstance(node, dict) or part not in node:
                raise ConfigError(f"override {override!r}: unknown key {'.'.join(parts[: depth + 1])!r}")
            if depth == len(parts) - 1:
                node[part] = yaml.safe_load(text) if text.strip() else ""
            else:
                node = node[part]
    return from_dict(data, type(config))


def load_config(path=None, overrides=(), cls=Config):
    """Defaults, then the YAML file at `path` (if any), then the dotted overrides."""
    data = {}
    if path is not None:
        try:
            data = yaml.safe_load(fileio.read_text(path)) or {}
        except OSError as error:
            raise ConfigError(f"cannot read config file {error}") from error
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML: {error}") from error
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        config = from_dict(data, cls)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from error
    try:
        return apply_overrides(config, overrides)
    except ConfigError as error:
        raise ConfigError(f"{path} with overrides {list(overrides)}: {error}" if path else str(error)) from error


def dump_config(config, path=None):
    """Writes the config as YAML to `path` (if given) and returns the YAML text. The file is
    replaced atomically (fileio.write_bytes), so another process (a worker checking the model dir)
    never reads half."""
    text = yaml.safe_dump(to_dict(config), sort_keys=False)
    if path is not None:
        fileio.write_text(path, text)
    return text
