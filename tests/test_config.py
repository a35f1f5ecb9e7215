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
