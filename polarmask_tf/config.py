"""Typed configuration: nested dataclasses with defaults, YAML files, dotted overrides.

    config = load_config("configs/quickstart.yaml", overrides=["polar.num_rays=72"])
    dump_config(config, "model_dir/config.yaml")

A YAML file sets any subset of fields; everything else keeps its default. Unknown keys and values
of the wrong type raise ConfigError naming the dotted key (and the file). Override values are
parsed as YAML scalars or lists (`a.b=8`, `a.c=[1, 2]`, `a.d=null`).
"""

import dataclasses
import os
import types
import typing

import yaml


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
    strides: typing.Tuple[int, ...] = (8, 16, 32, 64, 128)
    """FPN level strides P3..P7, pixels."""
    grid: typing.Literal["cell_center", "original"] = "cell_center"
    """Location (i, j) of a level with stride s sits at x = j*s + (s-1)/2 ("cell_center": the
    centre of its s x s pixel cell, symmetric under flips) or x = j*s + s//2 ("original": half a
    pixel right of and below it, as the original release)."""
    regress_ranges: typing.Tuple[typing.Tuple[float, float], ...] = (
        (-1.0, 64.0), (64.0, 128.0), (128.0, 256.0), (256.0, 512.0), (512.0, 1e8))
    """Per level, the inclusive range of max(l, t, r, b) a positive location may have, pixels."""
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
    group_norm_groups: int = 32
    prior_prob: float = 0.01
    """Initial foreground probability of the class logits (bias -log((1 - p) / p))."""


@dataclasses.dataclass
class DataConfig:
    """Input pipeline (data.pipeline.build_dataset)."""

    train_files: str = "data/synthetic/tfrecords/train-*.tfrecord"
    """Glob of training TFRecord shards (tools/create_tfrecords)."""
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
    prefix in one) holding config.yaml, written by training or tools.convert_original. The network
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
    box_source: typing.Literal["box_branch", "polygon"] = "box_branch"
    """Detection boxes (used by NMS and returned): the box branch, or the extent of the polygon."""
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
            return tuple(_convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
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
    values = {name: _convert(value, hints[name], f"{prefix}.{name}" if prefix else name) for name, value in data.items()}
    return cls(**values)


def from_dict(data, cls=Config):
    """Builds `cls` from a nested dict; missing keys keep their defaults."""
    return _from_dict(cls, data or {})


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
            with open(path) as stream:
                data = yaml.safe_load(stream) or {}
        except OSError as error:
            raise ConfigError(f"cannot read config file {path}: {error.strerror}") from error
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML: {error}") from error
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        config = from_dict(data, cls)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from error
    return apply_overrides(config, overrides)


def dump_config(config, path=None):
    """Writes the config as YAML to `path` (if given) and returns the YAML text. The file is
    replaced atomically, so another process (a worker checking the model dir) never reads half."""
    text = yaml.safe_dump(to_dict(config), sort_keys=False)
    if path is not None:
        partial = f"{path}.{os.getpid()}.tmp"
        with open(partial, "w") as stream:
            stream.write(text)
        os.replace(partial, path)
    return text
