checkpoint demo:
    output:
        DEMO_SAMPLES,
    params:
        outdir=lambda wildcards, output: Path(output[0]).parent,
        seed=config["demo"]["seed"],
    log:
        f"{OUT}/logs/demo.log",
    conda:
        "../../envs/slides.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=15,
        cpus_per_task=1,
    shell:
        "multimag demo {params.outdir:q} --seed {params.seed} > {log} 2>&1"
