"""What a fold's index folder is to the steps that use it: its summary
(``index.json``), its test slides and a digest of its content, so a model and
its predictions can be tied to the exact index they came from (docs/learn.md,
"The model folder")."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from multimag.errors import IndexBuildError

SUMMARY_FILE = "index.json"
_FIX = "re-run the index rule (multimag index) for this fold"


def read_index_summary(index_dir: str | Path) -> dict:
    """The fold's ``index.json``."""
    path = Path(index_dir) / SUMMARY_FILE
    if not path.is_file():
        raise IndexBuildError(f"the index folder has no {SUMMARY_FILE}", path=index_dir, fix=_FIX)
    try:
        summary = json.loads(path.read_text())
    except ValueError as exc:
        raise IndexBuildError(f"not valid JSON ({exc})", path=path, fix=_FIX) from exc
    if not isinstance(summary, dict):
        raise IndexBuildError("not an index summary", path=path, fix=_FIX)
    return summary


def index_test_slides(summary: dict) -> list[str]:
    """The test slides an index summary lists, sorted."""
    return sorted(str(s) for s in (summary.get("slides") or {}).get("test", []))


def index_digest(index_dir: str | Path) -> str:
    """SHA-256 over the name and content of every file the index lists
    (``index.json`` included), in name order."""
    index_dir = Path(index_dir)
    names = sorted({*read_index_summary(index_dir).get("files", []), SUMMARY_FILE})
    digest = hashlib.sha256()
    for name in names:
        path = index_dir / name
        if not path.is_file():
            raise IndexBuildError(f"{SUMMARY_FILE} lists {name}, which the folder lacks",
                                  path=index_dir, fix=_FIX)
        with open(path, "rb") as fh:
            content = hashlib.file_digest(fh, "sha256").hexdigest()
        digest.update(f"{name}\0{content}\n".encode())
    return digest.hexdigest()
