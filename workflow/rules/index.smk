# One job per fold reads every slide's label table: memory grows with the
# number of patches in the cohort.
rule index:
    input:
        splits=f"{OUT}/splits.tsv",
        labels=lambda wildcards: expand(f"{OUT}/labels/{{slide}}.parquet", slide=samples().index),
    output:
        directory(f"{OUT}/indices/fold{{fold}}"),
    params:
        config=RESOLVED_CONFIG,
        settings=step_settings(config, "index"),
        labels_dir=f"{OUT}/labels",
    log:
        f"{OUT}/logs/index/fold{{fold}}.log",
    conda:
        "../../envs/slides.yaml"
    threads: 1
    resources:
        mem_mb=lambda wildcards, attempt: 8000 * attempt,
        runtime=lambda wildcards, attempt: 30 * attempt,
        cpus_per_task=1,
    shell:
        "multimag index {input.splits:q} {params.labels_dir:q} {output:q} "
        "--fold {wildcards.fold} --config {params.config:q} > {log} 2>&1"
