# A tile job runs `threads` worker processes. On a 40,000 x 30,000 px slide at
# 40x/20x/10x/5x, 224 px, each peaks at about 0.3 GB and the job at 0.8 GB with 2
# workers, 1.4 GB with 4 (benchmarks/README.md), bounded by the tile cache and
# the stripe, not by the slide; mem_mb and runtime double on each retry (--retries).
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
    benchmark:
        f"{OUT}/benchmarks/tile/{{slide}}.tsv",
    conda:
        "../../envs/slides.yaml"
    threads: config["threads"]
    resources:
        mem_mb=lambda wildcards, threads, attempt: (
            (1000 + threads * (200 + 2 * config["cache_mb"])) * attempt
        ),
        runtime=lambda wildcards, attempt: 60 * attempt,
        cpus_per_task=lambda wildcards, threads: threads,
    shell:
        "multimag tile {input.slide:q} {output:q} --slide-id {wildcards.slide} "
        "--patient-id {params.patient:q} {params.mpp} --tissue {input.tissue:q} "
        "--config {params.config:q} --threads {threads} > {log} 2>&1"
