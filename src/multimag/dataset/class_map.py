"""The annotation class map: annotation class names and mask values -> our classes.

Parses the config's ``labels.class_map`` once, refusing conflicts, so that the
readers only look names and pixel values up. Matching rules: docs/dataset.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from multimag.errors import ConfigError

CLASSES = ("tumour", "normal", "exclude")

_FIX_ENTRY = "list class names (strings) or pixel values (integers)"


@dataclass(frozen=True)
class ClassMap:
    """Class name (exact or case-folded) and pixel value -> one of :data:`CLASSES`."""

    exact: dict[str, str]
    folded: dict[str, str | None]  # None: the case-folded name is ambiguous
    values: dict[int, str]

    @classmethod
    def parse(cls, class_map: Mapping[str, Sequence[Any]]) -> ClassMap:
        """Check and index ``labels.class_map``; a name or value given twice is an error."""
        parsed = cls({}, {}, {})
        for name, entries in (class_map or {}).items():
            if name not in CLASSES:
                raise ConfigError(f"labels.class_map has an unknown class {name!r}",
                                  fix=f"use only {', '.join(CLASSES)}")
            if isinstance(entries, (str, bytes)) or not isinstance(entries, Iterable):
                raise ConfigError(f"labels.class_map.{name} is not a list",
                                  fix=f"write {name}: [name, ...]")
            for entry in entries:
                parsed._add(name, entry)
        return parsed

    def _add(self, name: str, entry: Any) -> None:
        if isinstance(entry, (bool, np.bool_)):
            raise ConfigError(f"labels.class_map.{name} contains {entry!r}", fix=_FIX_ENTRY)
        if isinstance(entry, (int, np.integer)):
            other = self.values.setdefault(int(entry), name)
            if other != name:
                raise ConfigError(f"labels.class_map gives pixel value {entry} to "
                                  f"both {other} and {name}", fix="list it once")
        elif isinstance(entry, str):
            other = self.exact.setdefault(entry, name)
            if other != name:
                raise ConfigError(f"labels.class_map gives class {entry!r} to both "
                                  f"{other} and {name}", fix="list it once")
            key = entry.casefold()
            if self.folded.setdefault(key, name) != name:
                self.folded[key] = None
        else:
            raise ConfigError(f"labels.class_map.{name} contains {entry!r}", fix=_FIX_ENTRY)

    def lookup(self, name: str) -> str | None:
        """Our class of an annotation class name, or None when unknown or ambiguous."""
        if name in self.exact:
            return self.exact[name]
        return self.folded.get(name.casefold())
