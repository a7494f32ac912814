"""The fixed layout of the demo cohort: which slides, patients, labels, sizes and scanners.

Only the layout is fixed here; what each slide shows depends on the seed.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BASE_MPP", "DemoSlide", "cohort_spec"]

BASE_MPP = 0.25          # um/px of a 40x scan


@dataclass(frozen=True)
class DemoSlide:
    """One slide of the demo cohort (a fixed layout; only the content depends on the seed)."""

    index: int
    slide_id: str
    patient_id: str
    label: str               # "tumour" or "normal"
    mpp: float               # true level-0 pixel size, um/px
    app_mag: float
    mpp_in_metadata: bool    # False: the SVS carries no MPP (samples.tsv gives it)
    width: int
    height: int
    tile: int
    force_hole: bool         # its first tumour region gets a normal island

    @property
    def samples_mpp(self) -> str:
        return "" if self.mpp_in_metadata else f"{self.mpp:g}"


# slide_id, label, width and height at 40x (level 0 px), note
_LAYOUT: tuple[tuple[str, str, int, int, str], ...] = (
    ("P01_A", "tumour", 3000, 2200, "hole"),
    ("P01_B", "tumour", 3071, 2163, ""),
    ("P02_A", "tumour", 2945, 2241, ""),
    ("P03_A", "tumour", 3117, 2189, "hole"),
    ("P03_B", "tumour", 2988, 2227, ""),
    ("P04_A", "tumour", 3002, 2202, "20x"),
    ("P05_A", "tumour", 3053, 2175, "no-mpp"),
    ("P06_A", "tumour", 2911, 2233, ""),
    ("P06_B", "tumour", 3096, 2151, ""),
    ("P07_A", "tumour", 2967, 2219, ""),
    ("P08_A", "normal", 3033, 2195, ""),
    ("P08_B", "normal", 2979, 2247, ""),
    ("P09_A", "normal", 3110, 2171, ""),
    ("P10_A", "normal", 2953, 2209, ""),
)


def cohort_spec() -> list[DemoSlide]:
    """The fixed layout of the demo cohort (ids, patients, labels, sizes, scanners)."""
    out = []
    for k, (slide_id, label, width_40x, height_40x, note) in enumerate(_LAYOUT):
        is_20x = note == "20x"
        out.append(DemoSlide(
            index=k, slide_id=slide_id, patient_id=slide_id.split("_")[0], label=label,
            mpp=2 * BASE_MPP if is_20x else BASE_MPP, app_mag=20.0 if is_20x else 40.0,
            mpp_in_metadata=note != "no-mpp",
            width=width_40x // 2 if is_20x else width_40x,
            height=height_40x // 2 if is_20x else height_40x,
            tile=240 if k % 2 == 0 else 256, force_hole=note == "hole",
        ))
    return out
