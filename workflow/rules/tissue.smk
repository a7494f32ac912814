rule tissue:
    input:
        slide=slide_path,
    output:
        mask=f"{OUT}/tissue/{{slide}}.npz",
        qc=report(
            f"{OUT}/qc/{{slide}}.png",
            caption="../report/tissue_qc.rst",
            category="Tiling QC",
            labels={"slide": "{slide}"},
        ),
    params:
        config=RESOLVED_CONFIG,
        settings=step_settings(config, "tissue"),
        mpp=mpp_option,
    log:
        f"{OUT}/logs/tissue/{{slide}}.log",
    conda:
        "../../envs/slides.yaml"
    threads: 1
    resources:
        mem_mb=lambda wildcards, attempt: 2000 * attempt,
        runtime=lambda wildcards, attempt: 15 * attempt,
        cpus_per_task=1,
    shell:
        "multimag tissue {input.slide:q} {output.mask:q} --slide-id {wildcards.slide} "
        "{params.mpp} --config {params.config:q} --qc {output.qc:q} > {log} 2>&1"
