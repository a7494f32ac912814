"""The tumour annotation of a demo slide in three formats: QuPath GeoJSON, ASAP XML and a
PAIP-style raster mask TIFF, all in level-0 pixel coordinates of the slide.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import tifffile
from shapely.geometry import LinearRing, Polygon

from multimag.atomic import atomic_path
from multimag.demo.pyramid import box_downsample

__all__ = ["MASK_DOWNSAMPLE", "asap_xml_text", "geojson_text", "write_mask_tiff"]

MASK_DOWNSAMPLE = 4      # raster mask pixel = 4x4 level-0 pixels
TUMOUR_CLASS = "Tumor"
EXCLUSION_GROUP = "Exclusion"
_TUMOUR_COLOUR = "#C80000"
_EXCLUSION_COLOUR = "#64FE2E"


def geojson_text(regions: list[Polygon]) -> str:
    """QuPath GeoJSON: one ``Tumor`` annotation feature per region, holes as inner rings."""
    features = []
    for k, poly in enumerate(regions):
        rings = [poly.exterior, *poly.interiors]
        features.append({
            "type": "Feature",
            "id": f"tumor-{k}",
            "geometry": {"type": "Polygon",
                         "coordinates": [[[round(x, 2), round(y, 2)] for x, y in r.coords]
                                         for r in rings]},
            "properties": {"objectType": "annotation",
                           "classification": {"name": TUMOUR_CLASS, "color": [200, 0, 0]}},
        })
    return json.dumps({"type": "FeatureCollection", "features": features}) + "\n"


def _asap_annotation(k: int, group: str, colour: str, ring: LinearRing) -> list[str]:
    """The XML lines of one ASAP polygon annotation (ring without its closing point)."""
    lines = [f'\t\t<Annotation Name="Annotation {k}" Type="Polygon" '
             f'PartOfGroup="{group}" Color="{colour}">', "\t\t\t<Coordinates>"]
    for i, (x, y) in enumerate(list(ring.coords)[:-1]):
        lines.append(f'\t\t\t\t<Coordinate Order="{i}" X="{x:.2f}" Y="{y:.2f}" />')
    return lines + ["\t\t\t</Coordinates>", "\t\t</Annotation>"]


def asap_xml_text(regions: list[Polygon]) -> str:
    """ASAP / CAMELYON16 XML: outlines in group ``Tumor``, holes in group ``Exclusion``."""
    lines = ['<?xml version="1.0"?>', "<ASAP_Annotations>", "\t<Annotations>"]
    k = 0
    for poly in regions:
        for group, ring, colour in [(TUMOUR_CLASS, poly.exterior, _TUMOUR_COLOUR)] + [
                (EXCLUSION_GROUP, r, _EXCLUSION_COLOUR) for r in poly.interiors]:
            lines += _asap_annotation(k, group, colour, ring)
            k += 1
    lines += ["\t</Annotations>", "\t<AnnotationGroups>"]
    for name, colour in ((TUMOUR_CLASS, _TUMOUR_COLOUR), (EXCLUSION_GROUP, _EXCLUSION_COLOUR)):
        lines += [f'\t\t<Group Name="{name}" PartOfGroup="None" Color="{colour}">',
                  "\t\t\t<Attributes />", "\t\t</Group>"]
    lines += ["\t</AnnotationGroups>", "</ASAP_Annotations>", ""]
    return "\n".join(lines)


def _mask_levels(tumour: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Level-0 mask -> uint8 masks at downsample 4 and 16 (area fraction >= 0.5)."""
    m = tumour.astype(np.uint8)[..., None] * np.uint8(255)
    m4 = box_downsample(m, MASK_DOWNSAMPLE)[..., 0] >= 128
    m16 = box_downsample(m, MASK_DOWNSAMPLE * 4)[..., 0] >= 128
    return m4.astype(np.uint8), m16.astype(np.uint8)


def write_mask_tiff(path: Path, tumour: np.ndarray) -> None:
    """The raster mask (1 = tumour) at downsample 4, with a downsample-16 sub-IFD."""
    m4, m16 = _mask_levels(tumour)
    h, w = tumour.shape
    desc = json.dumps({"multimag_mask": "tumour", "values": {"0": "not tumour", "1": "tumour"},
                       "downsample": MASK_DOWNSAMPLE, "level0_width": w, "level0_height": h,
                       "levels_downsample": [MASK_DOWNSAMPLE, MASK_DOWNSAMPLE * 4]})
    options = dict(tile=(256, 256), compression="zlib", photometric="minisblack", metadata=None,
                   software=False)
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp) as tif:
        tif.write(m4, subifds=1, description=desc, **options)
        tif.write(m16, subfiletype=1, **options)
