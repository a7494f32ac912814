rule index:
    input:
        splits=f"{OUT}/splits.tsv",
        labels=lambda wildcards: expand(f"{OUT}/labels/{{slide}}.parquet", slide=samples().index),
        config=RESOLVED_CONFIG,
    output:
        directory(f"{OUT}/indices/fold{{fold}}"),
    params:
        labels_dir=f"{OUT}/labels",
    log:
        f"{OUT}/logs/index/fold{{fold}}.log",
    shell:
        "multimag index {input.splits:q} {params.labels_dir:q} {output:q} "
        "--fold {wildcards.fold} --config {input.config:q} > {log} 2>&1"
