"""The typed config system: defaults, YAML, dotted overrides, errors, dumps."""

import dataclasses
import pathlib
import typing

import pytest

from polarmask_tf import config as cfg

CONFIGS = pathlib.Path(__file__).resolve().parent.parent / "configs"


@dataclasses.dataclass
class Inner:
    scales: typing.Tuple[int, ...] = (1, 2)
    ratio: float = 0.5
    name: typing.Optional[str] = None


@dataclasses.dataclass
class Outer:
    inner: Inner = dataclasses.field(default_factory=Inner)
    steps: typing.List[int] = dataclasses.field(default_factory=lambda: [8, 11])
    mode: typing.Literal["a", "b"] = "a"
    flag: bool = False


def test_defaults_and_every_shipped_config_loads():
    assert cfg.Config().polar.num_rays == 36
    for path in sorted(CONFIGS.glob("*.yaml")):
        assert isinstance(cfg.load_config(path), cfg.Config), path


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("polar:\n  num_rays: 18\nsynthetic:\n  seed: 3\n")
    config = cfg.load_config(path, ["polar.num_rays=72", "polar.ray_method=reference", "synthetic.val_fraction=0"])
    assert config.polar.num_rays == 72 and config.polar.ray_method == "reference"
    assert config.synthetic.seed == 3 and config.synthetic.val_fraction == 0.0
    assert isinstance(config.synthetic.val_fraction, float)
    assert config.polar.center == "mass"  # untouched default


def test_nested_types_convert():
    config = cfg.apply_overrides(Outer(), ["inner.scales=[4, 5, 6]", "inner.ratio=2", "inner.name=p3", "steps=[1]"])
    assert config.inner.scales == (4, 5, 6) and config.inner.ratio == 2.0 and config.inner.name == "p3"
    assert config.steps == [1]
    assert cfg.apply_overrides(config, ["inner.name=null"]).inner.name is None
    assert cfg.apply_overrides(config, ["inner.ratio=1e8"]).inner.ratio == 1e8  # YAML reads 1e8 as a string


@pytest.mark.parametrize(
    "override, message",
    [
        ("polar.num_ray=4", "unknown key 'polar.num_ray'"),
        ("trainer.steps=50", "unknown key 'trainer'"),
        ("polar.center_sample_radius=wide", "polar.center_sample_radius: expected float, got str"),
        ("polar.num_rays=many", "polar.num_rays: expected int, got str"),
        ("polar.num_rays=true", "polar.num_rays: expected int, got the boolean"),
        ("polar.num_rays=3.5", "polar.num_rays: expected int, got float"),
        ("polar.ray_method=fast", "polar.ray_method: 'fast' is not one of ['exact', 'reference']"),
        ("polar", "expected key=value"),
    ],
)
def test_override_errors_name_the_key(override, message):
    with pytest.raises(cfg.ConfigError) as error:
        cfg.load_config(None, [override])
    assert message in str(error.value)


def test_file_errors_name_the_file_and_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("polar:\n  rays: 36\n")
    with pytest.raises(cfg.ConfigError, match=r"bad\.yaml: unknown key 'polar\.rays'; PolarConfig has: num_rays"):
        cfg.load_config(path)
    path.write_text("polar: [1, 2]\n")
    with pytest.raises(cfg.ConfigError, match="polar: expected a mapping"):
        cfg.load_config(path)
    path.write_text("- 1\n")
    with pytest.raises(cfg.ConfigError, match="top level"):
        cfg.load_config(path)
    path.write_text("polar: {num_rays: [\n")
    with pytest.raises(cfg.ConfigError, match="not valid YAML"):
        cfg.load_config(path)
    with pytest.raises(cfg.ConfigError, match="cannot read config file"):
        cfg.load_config(tmp_path / "missing.yaml")
    with pytest.raises(cfg.ConfigError, match=r"inner\.scales\[1\]: expected int"):
        cfg.from_dict({"inner": {"scales": [1, "x"]}}, Outer)


def test_dump_and_reload_round_trip(tmp_path):
    config = cfg.apply_overrides(Outer(), ["mode=b", "flag=true", "inner.scales=[3]"])
    text = cfg.dump_config(config, tmp_path / "out.yaml")
    assert "mode: b" in text
    assert cfg.load_config(tmp_path / "out.yaml", cls=Outer) == config


@pytest.mark.parametrize("overrides, message", [
    (["polar.regress_ranges=[[-1, 64], [64, 128]]"],
     r"polar.regress_ranges: needs one \(low, high\) per level P3..P7 \(5\), got 2"),
    (["polar.regress_ranges=[[-1, 64], [64, 32], [128, 256], [256, 512], [512, 1e8]]"],
     r"polar.regress_ranges\[1\]: low 64.0 must be below high 32.0"),
    (["polar.regress_ranges=[[-1, 64], [128, 256], [64, 128], [256, 512], [512, 1e8]]"], r"must rise from P3 to P7"),
    (["data.size_divisor=96"], r"data.size_divisor: must be a multiple of 128"),
    (["model.head_channels=48", "model.group_norm_groups=32"],
     r"model.head_channels: 48 is not divisible by model.group_norm_groups=32"),
    (["polar.num_rays=35"], r"polar.num_rays: 35 is odd, but horizontal flips"),
    (["polar.num_rays=2"], r"polar.num_rays: needs at least 3 rays"),
    (["model.backbone=tiny", "model.backbone_weights=imagenet"],
     r"model.backbone_weights: backbone 'tiny' has no pretrained"),
    (["model.backbone=resnext101_64x4d", "model.backbone_weights=imagenet"],
     r"keras.applications has no ImageNet ResNeXt"),
    (["model.prior_prob=1.0"], r"model.prior_prob: must lie in \(0, 1\)"),
    (["data.scale_range=[1.2, 0.8]"], r"data.scale_range: needs 0 < low <= high"),
    (["data.hflip_prob=1.5"], r"data.hflip_prob: must lie in \[0, 1\]"),
    (["data.max_vertices=2"], r"data.max_vertices: must be at least 3"),
    (["data.max_instances=0"], r"data.max_instances: must be at least 1, got 0"),
    (["data.batch_size=-4"], r"data.batch_size: must be at least 1, got -4"),
    (["data.image_size=[0, 512]"], r"data.image_size: needs positive \(height, width\)"),
    (["data.size_divisor=0"], r"data.size_divisor: must be a multiple of 128"),
    (["train.checkpoint_every=0"], r"train.checkpoint_every: must be at least 1, got 0"),
    (["train.log_every=0"], r"train.log_every: must be at least 1, got 0"),
    (["train.decay_steps=[800, 600]"], r"train.decay_steps: must be positive and strictly increasing"),
    (["train.eval_every=100"], r"train.eval_every: needs train.eval_annotations and train.eval_images_dir"),
    (["train.warmup_factor=0"], r"train.warmup_factor: must lie in \(0, 1\]"),
    (["postprocess.score_threshold=1.5"], r"postprocess.score_threshold: must lie in \[0, 1\]"),
    (["postprocess.nms_iou_threshold=0"], r"postprocess.nms_iou_threshold: must lie in \(0, 1\]"),
    (["postprocess.max_detections=0"], r"postprocess.max_detections: must be at least 1"),
    (["synthetic.min_size=400", "synthetic.max_size=300"], r"synthetic.min_size: needs 64 <= min_size <= max_size"),
])
def test_cross_checks_refuse_what_the_model_cannot_honour(overrides, message):
    with pytest.raises(cfg.ConfigError, match=message):
        cfg.load_config(None, overrides)


def test_a_bad_value_in_a_file_names_the_file_and_the_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("data:\n  size_divisor: 64\nmodel:\n  prior_prob: 0\n")
    with pytest.raises(cfg.ConfigError, match=r"bad.yaml: .*model.prior_prob: must lie in \(0, 1\).*data.size_divisor"):
        cfg.load_config(path)
    with pytest.raises(cfg.ConfigError,
                       match=r"quickstart.yaml with overrides \['data.size_divisor=64'\]: data.size_divisor"):
        cfg.load_config(CONFIGS / "quickstart.yaml", ["data.size_divisor=64"])


def test_removed_polar_strides_loads_from_old_model_dirs_only_with_its_one_value(tmp_path):
    old = tmp_path / "config.yaml"
    old.write_text("polar:\n  num_rays: 36\n  strides: [8, 16, 32, 64, 128]\n")
    assert cfg.load_config(old).polar.num_rays == 36
    old.write_text("polar:\n  strides: [8, 16, 32, 64]\n")
    with pytest.raises(cfg.ConfigError, match=r"polar.strides no longer exists: the pyramid is always P3..P7"):
        cfg.load_config(old)
