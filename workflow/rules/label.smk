import shlex


rule label:
    input:
        store=f"{OUT}/stores/{{slide}}.zarr",
        annotation=lambda wildcards: sample(wildcards.slide)["annotation"] or [],
    output:
        f"{OUT}/labels/{{slide}}.parquet",
    params:
        config=RESOLVED_CONFIG,
        settings=step_settings(config, "label"),
        annotation=lambda wildcards, input: (
            f"--annotation {shlex.quote(input.annotation)}" if input.annotation else ""
        ),
        slide_label=lambda wildcards: (
            f"--slide-label {sample(wildcards.slide)['slide_label']}"
            if sample(wildcards.slide)["slide_label"]
            else ""
        ),
    log:
        f"{OUT}/logs/label/{{slide}}.log",
    benchmark:
        f"{OUT}/benchmarks/label/{{slide}}.tsv",
    conda:
        "../../envs/slides.yaml"
    threads: 1
    resources:
        mem_mb=lambda wildcards, attempt: 4000 * attempt,
        runtime=lambda wildcards, attempt: 15 * attempt,
        cpus_per_task=1,
    shell:
        "multimag label {input.store:q} {output:q} {params.annotation} {params.slide_label} "
        "--config {params.config:q} > {log} 2>&1"
