"""Files the workflow keeps beside the package: they must not drift apart.
Fast, runs no Snakemake."""

from __future__ import annotations

from conftest import REPO

from multimag.config import SCHEMA_PATH

WORKFLOW_SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"


def test_workflow_schema_is_a_real_file():
    """A plain copy, not a link into src/: the workflow folder stands on its own."""
    assert WORKFLOW_SCHEMA.is_file() and not WORKFLOW_SCHEMA.is_symlink()


def test_workflow_schema_is_the_packaged_schema():
    """Snakemake validates the config with the workflow's copy, the CLI with the
    packaged one: the two must say the same thing."""
    assert WORKFLOW_SCHEMA.read_bytes() == SCHEMA_PATH.read_bytes(), (
        "workflow/schemas/config.schema.yaml differs from src/multimag/schemas/"
        "config.schema.yaml: copy the packaged schema over the workflow's")
