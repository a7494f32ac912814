# Peak RSS of one tile job is about 0.4 GB on a 40,000 x 30,000 px slide at
# 40x/20x/10x/5x, 224 px (benchmarks/README.md), bounded by the stripe, not
# the slide; mem_mb and runtime double on each retry (--retries).
rule tile:
    input:
        slide=slide_path,
        tissue=f"{OUT}/tissue/{{slide}}.npz",
    output:
        directory(f"{OUT}/stores/{{slide}}.zarr"),
    params:
        config=RESOLVED_CONFIG,
        settings=step_settings(config, "tile"),
        mpp=mpp_option,
        patient=patient_of,
    log:
        f"{OUT}/logs/tile/{{slide}}.log",
    conda:
        "../../envs/slides.yaml"
    threads: config["threads"]
    resources:
        mem_mb=lambda wildcards, attempt: (2000 + 2 * config["cache_mb"]) * attempt,
        runtime=lambda wildcards, attempt: 60 * attempt,
        cpus_per_task=lambda wildcards, threads: threads,
    shell:
        "multimag tile {input.slide:q} {output:q} --slide-id {wildcards.slide} "
        "--patient-id {params.patient:q} {params.mpp} --tissue {input.tissue:q} "
        "--config {params.config:q} > {log} 2>&1"
