# multimag: slides in, co-registered multi-magnification patch stores, labels,
# patient-level folds and the pair/triplet/magnification-pair indices out.
# Rules are thin: each calls one `multimag` subcommand (see workflow/rules/).
from snakemake.utils import min_version

min_version("8.20")


configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/demo.smk"
include: "workflow/rules/tissue.smk"
include: "workflow/rules/tile.smk"
include: "workflow/rules/label.smk"
include: "workflow/rules/split.smk"
include: "workflow/rules/index.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/predict.smk"
include: "workflow/rules/aggregate.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/figures.smk"


report: "workflow/report/workflow.rst"


rule all:
    input:
        all_outputs,
    default_target: True


rule dataset:
    """The dataset alone: stores, QC pictures, labels, folds and indices."""
    input:
        dataset_outputs,
