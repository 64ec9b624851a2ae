"""Load a stage config: YAML file + ``key=value`` overrides, validated against a dataclass schema.

Precedence, lowest first: schema defaults, the YAML file, CLI overrides. The result is a struct-mode
``DictConfig``: reading or writing an unknown key raises, and every value has the schema's type.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

RESOLVED_CONFIG_NAME = "config.yaml"


class ConfigError(ValueError):
    """A config that does not fit its schema; the message names the source and the key."""


def load_config(schema_cls: type, path: str | Path | None = None, overrides: Sequence[str] = ()) -> DictConfig:
    """Merge ``path`` (YAML) and dotted ``overrides`` onto ``schema_cls`` and resolve interpolations."""
    cfg = OmegaConf.structured(schema_cls)
    if path is not None:
        cfg = _merge(cfg, _read_yaml(Path(path)), f"config file {path}")
    if overrides:
        cfg = _merge(cfg, _parse_overrides(overrides), "command-line overrides")
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"required config values not set: {', '.join(missing)} (set them in the YAML or as key=value)")
    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as err:
        raise ConfigError(f"cannot resolve interpolation: {err}") from err
    return cfg


def parse_cli(argv: Sequence[str] | None, schema_cls: type, description: str) -> DictConfig:
    """``--config FILE [key=value ...]`` -> validated config. ``argv=None`` reads ``sys.argv[1:]``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", type=Path, help="YAML config file")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. engine.lr=1e-5 a=[1,2]")
    # The deepspeed launcher appends --local_rank=N; LOCAL_RANK in the environment carries the same value.
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)
    args = parser.parse_intermixed_args(argv)
    try:
        return load_config(schema_cls, args.config, args.overrides)
    except ConfigError as err:
        parser.error(str(err))


def stage_main(stage: str, run: Callable[[], int]) -> int:
    """Run a stage's command: what a user can fix (an unusable model folder, dataset file, checkpoint
    or value) is one line on stderr and exit code 2, not a traceback."""
    from lens_model.errors import LensError
    from training.common.checkpoint import NoIntactCheckpoint

    try:
        return run()
    except (LensError, OSError, ValueError, NoIntactCheckpoint) as exc:
        print(f"{stage}: error: {exc}", file=sys.stderr)
        return 2


def save_config(cfg: DictConfig, out_dir: str | Path) -> Path:
    """Write the resolved config as ``out_dir/config.yaml`` and return the path."""
    path = Path(out_dir) / RESOLVED_CONFIG_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(OmegaConf.to_yaml(cfg, resolve=True), encoding="utf-8")
    return path


def _read_yaml(path: Path) -> DictConfig:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        loaded = OmegaConf.load(path)
    except Exception as err:  # yaml.YAMLError and OmegaConf errors both mean "not a usable YAML mapping"
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from err
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return loaded


def _parse_overrides(overrides: Sequence[str]) -> DictConfig:
    bad = [item for item in overrides if "=" not in item or item.startswith("=")]
    if bad:
        raise ConfigError(f"overrides must look like key=value, got: {', '.join(bad)}")
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as err:
        raise ConfigError(f"cannot parse overrides {list(overrides)}: {err}") from err


def _merge(base: DictConfig, update: Any, source: str) -> DictConfig:
    try:
        merged = OmegaConf.merge(base, update)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "?"
        reason = str(err).splitlines()[0]
        raise ConfigError(f"{source}: bad value for '{key}': {reason}") from err
    assert isinstance(merged, DictConfig)
    return merged
