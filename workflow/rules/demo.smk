checkpoint demo:
    output:
        DEMO_SAMPLES,
    params:
        outdir=config["demo"]["outdir"],
        seed=config["demo"]["seed"],
    log:
        f"{OUT}/logs/demo.log",
    shell:
        "multimag demo {params.outdir} --seed {params.seed} > {log} 2>&1"
