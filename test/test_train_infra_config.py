"""Config loading: YAML + dotted CLI overrides merged onto a stage schema, with clear errors."""
from dataclasses import dataclass, field

import pytest
import yaml
from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError

from training.common.config import ConfigError, load_config, parse_cli, save_config
from training.common.schema import TrainConfig


@dataclass
class DataConfig:
    root: str = "data"
    splits: list[str] = field(default_factory=lambda: ["train"])
    image_size: int = 448


@dataclass
class StageConfig(TrainConfig):
    data: DataConfig = field(default_factory=DataConfig)
    run_name: str = "${data.root}-run"


def write_yaml(tmp_path, content):
    path = tmp_path / "stage.yaml"
    path.write_text(yaml.safe_dump(content))
    return path


def test_yaml_then_overrides_in_order_of_precedence(tmp_path):
    path = write_yaml(tmp_path, {"output_dir": "/tmp/out", "max_steps": 100, "engine": {"lr": 3e-5, "warmup_steps": 150}})
    cfg = load_config(
        StageConfig,
        path,
        ["engine.lr=1e-4", "data.splits=[refcoco,refcoco+]", "engine.betas=[0.9,0.95]", "data.root=/data"],
    )
    assert cfg.engine.lr == 1e-4  # CLI beats YAML
    assert cfg.engine.warmup_steps == 150  # YAML beats defaults
    assert cfg.engine.backend == "torch"  # schema default
    assert cfg.data.splits == ["refcoco", "refcoco+"]
    assert cfg.engine.betas == [0.9, 0.95]
    assert cfg.run_name == "/data-run"  # interpolations are resolved
    assert isinstance(cfg.max_steps, int)


def test_overrides_convert_to_the_schema_type():
    cfg = load_config(StageConfig, None, ["output_dir=o", "max_steps=7", "data.image_size=336", "engine.bf16=true"])
    assert cfg.max_steps == 7 and cfg.data.image_size == 336 and cfg.engine.bf16 is True


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["engine.lrr=1"], r"engine\.lrr"),
        (["engine.lr=fast"], r"engine\.lr.*fast"),
        (["max_steps=1.5"], "max_steps"),
        (["data.splits=refcoco"], "data.splits"),
        (["engine.lr"], "key=value"),
        (["=3"], "key=value"),
    ],
)
def test_bad_overrides_name_the_key(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(StageConfig, None, ["output_dir=o", "max_steps=1", *overrides])


def test_unknown_key_and_wrong_type_in_yaml(tmp_path):
    with pytest.raises(ConfigError, match=r"config file .*engine\.zero"):
        load_config(StageConfig, write_yaml(tmp_path, {"engine": {"zero": 2}}))
    with pytest.raises(ConfigError, match=r"data\.image_size"):
        load_config(StageConfig, write_yaml(tmp_path, {"data": {"image_size": "big"}}))


def test_missing_required_values_and_files(tmp_path):
    with pytest.raises(ConfigError, match="max_steps, output_dir"):
        load_config(StageConfig)
    with pytest.raises(ConfigError, match="not found"):
        load_config(StageConfig, tmp_path / "nope.yaml")
    not_mapping = tmp_path / "list.yaml"
    not_mapping.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(StageConfig, not_mapping)


def test_result_is_struct_mode():
    cfg = load_config(StageConfig, None, ["output_dir=o", "max_steps=1"])
    with pytest.raises(ConfigAttributeError):
        cfg.engine.learning_rate = 1.0


def test_parse_cli(tmp_path):
    path = write_yaml(tmp_path, {"output_dir": str(tmp_path / "out"), "max_steps": 10})
    cfg = parse_cli(["--local_rank=3", "engine.backend=deepspeed", "--config", str(path), "seed=1"], StageConfig, "test stage")
    assert cfg.engine.backend == "deepspeed" and cfg.max_steps == 10 and cfg.seed == 1
    cfg = parse_cli(["output_dir=x", "max_steps=2"], StageConfig, "no file")
    assert cfg.output_dir == "x"


def test_parse_cli_reports_errors_through_argparse(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_cli(["output_dir=x", "max_steps=2", "engine.nope=1"], StageConfig, "test stage")
    assert exit_info.value.code == 2
    assert "engine.nope" in capsys.readouterr().err


def test_save_config_round_trips(tmp_path):
    cfg = load_config(StageConfig, None, ["output_dir=o", "max_steps=3", "data.splits=[a,b]"])
    path = save_config(cfg, tmp_path / "run")
    assert path == tmp_path / "run" / "config.yaml"
    reloaded = load_config(StageConfig, path)
    assert reloaded == cfg
    assert OmegaConf.load(path).run_name == "data-run"  # saved resolved, not as "${...}"
