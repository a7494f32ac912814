def models_of_slide(wildcards):
    """Each method's model of the fold whose test set holds the slide, so a slide
    is never predicted by a model that saw its patient."""
    fold = test_fold(wildcards.slide)
    return [f"{OUT}/models/{method}/fold{fold}/model.json" for method in PREDICTED]


def predict_triples(wildcards, input, output):
    return " ".join(f"{shlex.quote(str(Path(model).parent))} {shlex.quote(input.store)} "
                    f"{shlex.quote(out)}" for model, out in zip(input.models, output))


rule predict:
    """One job per slide predicts it with every configured method (torch starts once)."""
    input:
        models=models_of_slide,
        store=f"{OUT}/stores/{{slide}}.zarr",
        labels=f"{OUT}/labels/{{slide}}.parquet",
    output:
        [f"{OUT}/predictions/{method}/{{slide}}.parquet" for method in PREDICTED],
    params:
        triples=predict_triples,
    log:
        f"{OUT}/logs/predict/{{slide}}.log",
    conda:
        "../../envs/torch.yaml"
    threads: config["train"]["threads"]
    resources:
        gpu=1,
        cpus_per_task=lambda wildcards, threads: threads,
        mem_mb=8000,
        runtime=60,
    shell:
        "multimag predict {params.triples} --labels {input.labels:q} --threads {threads} "
        "--no-progress > {log} 2>&1"
