# Configuration, samples and paths. No logic beyond wiring: the checks live in
# the multimag package, which the CLI steps use too.
import re
import shlex
from pathlib import Path

import yaml
from snakemake.utils import validate

from multimag.config import configured_methods, step_settings
from multimag.dataset.samples import load_samples
from multimag.dataset.splits import read_splits

validate(config, "../schemas/config.schema.yaml", set_default=True)

OUT = config["outdir"]
DEMO_SAMPLES = str(Path(config["demo"]["outdir"]) / "samples.tsv")
IS_DEMO = Path(config["samples"]) == Path(DEMO_SAMPLES)

# The resolved config every step reads (rewritten only when it changes). It is
# not an input of the rules: each rule's params carry the settings its outputs
# depend on (multimag.config.STEP_KEYS), so a changed key re-runs exactly the
# steps that use it, and a change of, say, the voting rule re-tiles nothing.
RESOLVED_CONFIG = f"{OUT}/config.resolved.yaml"
_text = yaml.safe_dump(config, sort_keys=True)
_path = Path(RESOLVED_CONFIG)
if not _path.exists() or _path.read_text() != _text:
    _path.parent.mkdir(parents=True, exist_ok=True)
    _path.write_text(_text)


_SAMPLES = {}


def samples():
    """The samples table (checked by multimag.dataset.samples, read once); in demo mode
    only after the demo checkpoint ran."""
    if IS_DEMO:
        checkpoints.demo.get()
    if "table" not in _SAMPLES:
        _SAMPLES["table"] = load_samples(config["samples"])
    return _SAMPLES["table"]


def sample(slide):
    return samples().loc[slide]


def slide_path(wildcards):
    return sample(wildcards.slide)["path"]


def mpp_option(wildcards):
    mpp = sample(wildcards.slide)["mpp"]
    return "" if mpp is None else f"--mpp {mpp}"


def patient_of(wildcards):
    return sample(wildcards.slide)["patient_id"]


def dataset_outputs(wildcards):
    """Everything up to the training indices: stores, QC, labels, folds."""
    slides = samples().index
    return (
        expand(f"{OUT}/stores/{{slide}}.zarr", slide=slides)
        + expand(f"{OUT}/qc/{{slide}}.png", slide=slides)
        + expand(f"{OUT}/labels/{{slide}}.parquet", slide=slides)
        + expand(f"{OUT}/indices/fold{{fold}}", fold=range(config["split"]["folds"]))
    )


# ce_single stands for one ce_single_{M}x per configured magnification
METHODS = configured_methods(config)
TRAINED = sorted(set(METHODS) | ({"mpcs_pretrain"} if "mpcs_finetune" in METHODS else set()))
PREDICTED = [m for m in METHODS if m != "mpcs_pretrain"]
FOLDS = list(range(config["split"]["folds"]))


wildcard_constraints:
    method="|".join(map(re.escape, TRAINED)) or "none",
    fold=r"\d+",


def test_fold(slide):
    """The fold whose test set holds the slide, read from splits.tsv once the split
    checkpoint has written it: the folds are computed in one place only."""
    if "folds" not in _SAMPLES:
        splits = read_splits(checkpoints.split.get().output[0])
        _SAMPLES["folds"] = splits.set_index("slide_id")["fold"]
    return int(_SAMPLES["folds"].loc[slide])


def model_outputs(wildcards):
    return expand(f"{OUT}/models/{{method}}/fold{{fold}}/model.json", method=TRAINED, fold=FOLDS)


def prediction_outputs(wildcards):
    return expand(f"{OUT}/predictions/{{method}}/{{slide}}.parquet", method=PREDICTED,
                  slide=samples().index)


def all_outputs(wildcards):
    results = ([f"{OUT}/summary.tsv"]
               + expand(f"{OUT}/{{method}}/figures/roc.png", method=PREDICTED)) if PREDICTED else []
    return (dataset_outputs(wildcards) + model_outputs(wildcards)
            + prediction_outputs(wildcards) + results)


def train_init(wildcards):
    """mpcs_finetune starts from the fold's mpcs_pretrain model."""
    if wildcards.method == "mpcs_finetune":
        return [f"{OUT}/models/mpcs_pretrain/fold{wildcards.fold}/model.json"]
    return []


def train_init_option(wildcards, input):
    return f"--init {Path(input.init[0]).parent}" if input.init else ""


def models_of_slide(wildcards):
    """Each method's model of the fold whose test set holds the slide, so a slide
    is never predicted by a model that saw its patient."""
    fold = test_fold(wildcards.slide)
    return [f"{OUT}/models/{method}/fold{fold}/model.json" for method in PREDICTED]


def predict_triples(wildcards, input, output):
    return " ".join(f"{shlex.quote(str(Path(model).parent))} {shlex.quote(input.store)} "
                    f"{shlex.quote(out)}" for model, out in zip(input.models, output))


def method_predictions(wildcards):
    return expand(f"{OUT}/predictions/{wildcards.method}/{{slide}}.parquet",
                  slide=samples().index)
