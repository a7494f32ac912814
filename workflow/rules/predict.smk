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
    benchmark:
        f"{OUT}/benchmarks/predict/{{slide}}.tsv",
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
