#!/usr/bin/env bash
# Snakemake runs this once, inside the new environment, after creating it
# (--use-conda), in the directory it runs in. It installs multimag itself,
# editable, so the environment follows this checkout. Run snakemake from the
# repository root, or point MULTIMAG_SOURCE at it.
set -euo pipefail
src=${MULTIMAG_SOURCE:-$PWD}
if ! grep -qs '^name = "multimag"' "$src/pyproject.toml"; then
    echo "multimag post-deploy: $src is not the multimag repository;" \
         "run snakemake from the repository root or set MULTIMAG_SOURCE" >&2
    exit 1
fi
python -m pip install --no-deps -e "$src"
