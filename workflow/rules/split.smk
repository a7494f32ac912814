checkpoint split:
    input:
        samples=config["samples"],
    output:
        f"{OUT}/splits.tsv",
    params:
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
        "--seed {params.seed} > {log} 2>&1"
