rule aggregate:
    input:
        predictions=method_predictions,
        splits=f"{OUT}/splits.tsv",
    output:
        slides=f"{OUT}/{{method}}/slides.tsv",
        patients=f"{OUT}/{{method}}/patients.tsv",
        summary=f"{OUT}/{{method}}/summary.json",
    params:
        config=RESOLVED_CONFIG,
        settings=step_settings(config, "aggregate"),
        predictions=lambda wildcards: f"{OUT}/predictions/{wildcards.method}",
        out_dir=lambda wildcards: f"{OUT}/{wildcards.method}",
    log:
        f"{OUT}/logs/aggregate/{{method}}.log",
    conda:
        "../../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=lambda wildcards, attempt: 2000 * attempt,
        runtime=lambda wildcards, attempt: 30 * attempt,
        cpus_per_task=1,
    shell:
        "multimag aggregate {params.predictions:q} {input.splits:q} {params.out_dir:q} "
        "--config {params.config:q} > {log} 2>&1"
