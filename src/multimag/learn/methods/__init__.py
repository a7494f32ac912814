"""The training methods by name: one object per method, one module per paper.

Adding a method means adding its module (a ``Method`` subclass), listing it in
``REGISTRY`` and naming it in the config schema's ``methods`` enum. The
single-magnification baselines ``ce_single_{M}x`` are made from their names.
"""

from __future__ import annotations

from multimag.config import SINGLE_MAGNIFICATION, single_magnification_of
from multimag.errors import ConfigError

from .base import Method, Sampling
from .baseline import CrossEntropyBaseline, SingleMagnification
from .constellation import Constellation
from .dsml import DSML
from .mpcs import MPCSFinetune, MPCSPretrain
from .smse import SMSEPair, SMSETriplet

REGISTRY: dict[str, Method] = {method.name: method for method in (
    CrossEntropyBaseline(), SMSEPair(), SMSETriplet(), DSML(), Constellation(),
    MPCSPretrain(), MPCSFinetune())}


def get_method(name: str) -> Method:
    """The method called ``name``; a ConfigError lists the known names."""
    method = REGISTRY.get(name)
    if method is None and (magnification := single_magnification_of(name)) is not None:
        method = SingleMagnification(magnification)
    if method is None:
        raise ConfigError(f"unknown method {name!r}", fix=f"use one of: {', '.join(REGISTRY)}"
                          f" or {SINGLE_MAGNIFICATION}_{{M}}x (M a configured magnification)")
    return method


def check_method(name: str) -> str:
    get_method(name)
    return name


__all__ = ["REGISTRY", "Method", "Sampling", "check_method", "get_method"]
