rule aggregate:
    input:
        predictions=method_predictions,
        splits=f"{OUT}/splits.tsv",
        config=RESOLVED_CONFIG,
    output:
        slides=f"{OUT}/{{method}}/slides.tsv",
        patients=f"{OUT}/{{method}}/patients.tsv",
        summary=f"{OUT}/{{method}}/summary.json",
    params:
        predictions=lambda wildcards: f"{OUT}/predictions/{wildcards.method}",
        out_dir=lambda wildcards: f"{OUT}/{wildcards.method}",
    log:
        f"{OUT}/logs/aggregate/{{method}}.log",
    conda:
        "../../envs/torch.yaml"
    shell:
        "multimag aggregate {params.predictions:q} {input.splits:q} {params.out_dir:q} "
        "--config {input.config:q} > {log} 2>&1"
