"""Configuration: one JSON Schema (``schemas/config.schema.yaml``) gives the keys,
their defaults and their limits, for the workflow (Snakemake's ``validate()``)
and for the CLI alike."""

from __future__ import annotations

import re
from copy import deepcopy
from importlib.resources import files
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from multimag.errors import ConfigError

SCHEMA_PATH = Path(str(files("multimag") / "schemas" / "config.schema.yaml"))

#: ``methods`` entry that stands for one single-magnification baseline per magnification
SINGLE_MAGNIFICATION = "ce_single"
_SINGLE_NAME = re.compile(rf"{SINGLE_MAGNIFICATION}_(\d+(?:\.\d+)?)x")


def schema() -> dict:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def _fill_defaults(instance: Any, node: dict) -> None:
    """Insert schema defaults into ``instance`` (recursively, objects only)."""
    if not isinstance(instance, dict):
        return
    for key, sub in node.get("properties", {}).items():
        if key not in instance and "default" in sub:
            instance[key] = deepcopy(sub["default"])
        if key in instance:
            _fill_defaults(instance[key], sub)


def validate_config(config: dict, source: str = "config") -> dict:
    """Validated copy of ``config`` with every default filled in."""
    config = deepcopy(config or {})
    spec = schema()
    _fill_defaults(config, spec)
    errors = sorted(jsonschema.Draft202012Validator(spec).iter_errors(config),
                    key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        key = ".".join(str(p) for p in err.absolute_path) or "(top level)"
        if err.validator == "additionalProperties":
            unknown = sorted(set(err.instance) - set(err.schema.get("properties", {})))
            key = ".".join(filter(None, [key if err.absolute_path else "", *unknown]))
            raise ConfigError(f"unknown config key {key!r}", path=source,
                              fix="remove it or correct its spelling (see "
                              "workflow/schemas/config.schema.yaml)")
        message = ("; ".join(e.message for e in err.context) if err.validator == "anyOf"
                   else err.message)  # each alternative, e.g. the method names and pattern
        raise ConfigError(f"config key {key!r}: {message}", path=source,
                          fix="see workflow/schemas/config.schema.yaml for allowed values")
    configured_methods(config, source)
    return config


def single_magnification_method(magnification: float) -> str:
    """The name of the baseline trained and tested at one magnification: ``ce_single_20x``."""
    return f"{SINGLE_MAGNIFICATION}_{float(magnification):g}x"


def single_magnification_of(name: str) -> float | None:
    """The magnification of a single-magnification method's name, else None."""
    match = _SINGLE_NAME.fullmatch(name)
    if match is None or single_magnification_method(float(match[1])) != name:
        return None  # ce_single_20.0x is not the name of the 20x baseline
    return float(match[1])


def configured_single_magnification(name: str, config: dict,
                                    source: str = "config") -> float | None:
    """The magnification of a single-magnification method (None for another
    method); a ConfigError when it is not among ``config["magnifications"]``."""
    magnification = single_magnification_of(name)
    if magnification is not None and magnification not in [float(m) for m in
                                                            config["magnifications"]]:
        raise ConfigError(f"method {name!r} is trained at {magnification:g}x, which is not "
                          f"among magnifications {config['magnifications']}", path=source,
                          fix=f"add {magnification:g} to magnifications, or use "
                          f"{SINGLE_MAGNIFICATION} (one model per configured magnification)")
    return magnification


def configured_methods(config: dict, source: str = "config") -> list[str]:
    """The methods of ``config["methods"]`` in order, ``ce_single`` standing for one
    ``ce_single_{M}x`` per configured magnification (each checked as configured)."""
    names: list[str] = []
    for name in config["methods"]:
        configured_single_magnification(name, config, source)
        expanded = ([single_magnification_method(m) for m in config["magnifications"]]
                    if name == SINGLE_MAGNIFICATION else [name])
        names += [n for n in expanded if n not in names]
    return names


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> dict:
    """Read a YAML config (or none: all defaults), apply CLI overrides, validate."""
    config: dict = {}
    source = "config"
    if path is not None:
        source = str(path)
        try:
            config = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError as exc:
            raise ConfigError("the config file does not exist", path=path,
                              fix="pass an existing YAML file to --config") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"not valid YAML ({exc})", path=path,
                              fix="correct the YAML syntax") from exc
        if not isinstance(config, dict):
            raise ConfigError("the config must be a YAML mapping", path=path,
                              fix="write key: value pairs at the top level")
    for key, value in (overrides or {}).items():
        if value is not None:
            config[key] = value
    return validate_config(config, source)


#: What each workflow step's outputs depend on, as dotted key paths of the config.
#: The rules pass these settings as Snakemake params, so changing a key re-runs
#: exactly the steps listed with it (and what depends on their outputs): a new
#: voting rule does not re-tile a cohort. Settings that change only the speed
#: (PERFORMANCE_KEYS) re-run nothing.
STEP_KEYS: dict[str, tuple[str, ...]] = {
    "tissue": ("reader", "resolution", "tissue"),
    "tile": ("reader", "resolution", "tissue", "magnifications", "patch_px", "mode",
             "stride_px", "allow_upsample", "resample", "store"),
    "label": ("labels",),
    "split": ("split", "labels.class_map"),
    "index": ("index", "magnifications"),
    "train": ("magnifications", "model", "train", "smse", "dsml", "constellation", "mpcs",
              "index.mpcs"),
    "aggregate": ("aggregate",),
    "evaluate": ("aggregate", "evaluate"),
    "figures": ("labels.class_map", "train.seed"),
}
PERFORMANCE_KEYS = frozenset({"train.threads", "train.workers", "train.device"})


def step_settings(config: dict, step: str) -> dict[str, Any]:
    """The settings ``step`` depends on: ``{dotted path: value}`` (see STEP_KEYS)."""
    out: dict[str, Any] = {}
    for path in STEP_KEYS[step]:
        value: Any = config
        for key in path.split("."):
            value = value[key]
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if f"{path}.{k}" not in PERFORMANCE_KEYS}
        out[path] = value
    return out
