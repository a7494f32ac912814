"""One exception type per failure class.

Every message names the slide, the file and the fix, on one line, because the
CLI prints ``str(error)`` as the only line on stderr and Snakemake shows it in
the failed job's log.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial
from pathlib import Path


class MultimagError(Exception):
    """Base class: a failure the user can fix from the message alone."""

    def __init__(self, what: str, *, slide: str | None = None, path: str | Path | None = None,
                 fix: str | None = None) -> None:
        self.what = what
        self.slide = slide
        self.path = str(path) if path is not None else None
        self.fix = fix
        parts = []
        if slide:
            parts.append(f"slide {slide!r}")
        if self.path:
            parts.append(f"file {self.path}")
        head = f"[{', '.join(parts)}] " if parts else ""
        tail = f" Fix: {fix}" if fix else ""
        super().__init__(f"{head}{what}.{tail}".replace("\n", " "))

    def __reduce__(self):  # rebuilt from its parts (a tiling worker's error reaches the CLI)
        return partial(type(self), slide=self.slide, path=self.path, fix=self.fix), (self.what,)


def short_list(ids: Iterable[str], limit: int = 10) -> str:
    """``a, b, c and 7 more``: ids for a one-line message."""
    ids = list(ids)
    more = f" and {len(ids) - limit} more" if len(ids) > limit else ""
    return ", ".join(ids[:limit]) + more


class SlideNotFoundError(MultimagError):
    """The slide path does not exist or is not a file."""


class SlideFormatError(MultimagError):
    """The file exists but no reader can open it (not a slide, truncated, unsupported)."""


class SlideReadError(MultimagError):
    """The slide opened but its pixels cannot be decoded."""


class ResolutionError(MultimagError):
    """No usable pixel size, or a magnification the slide cannot provide."""


class ConfigError(MultimagError):
    """A configuration value is missing, unknown or out of range."""


class StoreError(MultimagError):
    """A patch store is missing, incomplete or of an unknown schema."""


class SamplesError(MultimagError):
    """samples.tsv is malformed (missing columns, duplicate ids, bad paths)."""


class IndexBuildError(MultimagError):
    """The indices of a fold cannot be built from its splits and label tables."""


class LabelTableError(IndexBuildError):
    """A per-slide label table is missing or malformed."""


class PlotError(MultimagError):
    """A prediction table or plotting input is unusable (missing columns, no extent)."""


class AnnotationError(MultimagError):
    """An annotation file cannot be read: missing, empty, unknown format, malformed."""


class AnnotationWarning(UserWarning):
    """Something in an annotation file was dropped or repaired (the labels still follow)."""


class IndexReferenceError(MultimagError):
    """An index references a store, patch or magnification that does not exist."""


class SplitError(MultimagError):
    """A splits table (or the samples it is made from) cannot give valid folds."""


class LeakError(SplitError):
    """A patient appears in more than one fold (on both sides of a split)."""


class PredictionsError(MultimagError):
    """A predictions directory is incomplete, mixed, leaky or not of the schema."""


class ModelError(MultimagError):
    """A model directory is missing, incomplete or does not fit the data."""


class TrainingError(MultimagError):
    """Training cannot start or continue on these inputs."""
