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
        # splits.tsv outside the input function, which waits for the demo checkpoint:
        # so the split checkpoint is in the DAG from the start, and on a re-run the
        # predict jobs see its finished output (Snakemake updates the jobs below a
        # second, nested checkpoint only when it knows that checkpoint up front)
        f"{OUT}/splits.tsv",
        all_outputs,
    default_target: True


rule dataset:
    """The dataset alone: stores, QC pictures, labels, folds and indices."""
    input:
        dataset_outputs,
