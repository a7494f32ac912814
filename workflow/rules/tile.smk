rule tile:
    input:
        slide=slide_path,
        tissue=f"{OUT}/tissue/{{slide}}.npz",
        config=RESOLVED_CONFIG,
    output:
        directory(f"{OUT}/stores/{{slide}}.zarr"),
    params:
        mpp=mpp_option,
        patient=patient_of,
    log:
        f"{OUT}/logs/tile/{{slide}}.log",
    threads: config["threads"]
    resources:
        mem_mb=1000,
    shell:
        "multimag tile {input.slide:q} {output:q} --slide-id {wildcards.slide} "
        "--patient-id {params.patient:q} {params.mpp} --tissue {input.tissue:q} "
        "--config {input.config:q} > {log} 2>&1"
