"""Parquet tables that carry their provenance as JSON in the schema metadata.

Label tables and prediction tables both keep a JSON document under one schema
metadata key; this module is the one place that names the key and reads it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from multimag.atomic import atomic_path

METADATA_KEY = b"multimag"


def read_metadata(schema: pa.Schema) -> dict | None:
    """The JSON document under ``METADATA_KEY``, or None when absent or not JSON."""
    raw = (schema.metadata or {}).get(METADATA_KEY)
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None


def write_table(table: pa.Table, path: str | Path) -> Path:
    """Write ``table`` as Parquet atomically (temporary sibling, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path
