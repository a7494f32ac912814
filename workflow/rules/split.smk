checkpoint split:
    input:
        samples=config["samples"],
        # the diagnosis of a slide without slide_label comes from its annotation
        annotations=lambda wildcards: [a for a in samples()["annotation"] if a],
    output:
        f"{OUT}/splits.tsv",
    params:
        config=RESOLVED_CONFIG,
        settings=step_settings(config, "split"),
        folds=config["split"]["folds"],
        seed=config["split"]["seed"],
    log:
        f"{OUT}/logs/split.log",
    conda:
        "../../envs/slides.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
        cpus_per_task=1,
    shell:
        "multimag split {input.samples:q} {output:q} --folds {params.folds} "
        "--seed {params.seed} --config {params.config:q} > {log} 2>&1"
