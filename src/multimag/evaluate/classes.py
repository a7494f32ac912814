"""The two classes as the figures and the QuPath export show them: names and colours."""

from __future__ import annotations

#: display name per class
CLASS_NAMES = {0: "normal", 1: "tumour"}
#: RGB 0..255 per class (tumour as QuPath's default "Tumor" class)
CLASS_COLORS: dict[int, tuple[int, int, int]] = {1: (200, 0, 0), 0: (30, 100, 200)}


def class_rgb(cls: int) -> tuple[float, float, float]:
    """The class colour as matplotlib's RGB in 0..1."""
    r, g, b = CLASS_COLORS[cls]
    return (r / 255, g / 255, b / 255)
