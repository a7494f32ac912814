import shlex


def annotation_input(wildcards):
    annotation = sample(wildcards.slide)["annotation"]
    return [annotation] if annotation else []


def label_options(wildcards):
    row = sample(wildcards.slide)
    options = f"--annotation {shlex.quote(row['annotation'])}" if row["annotation"] else ""
    if row["slide_label"]:
        options += f" --slide-label {row['slide_label']}"
    return options


rule label:
    input:
        store=f"{OUT}/stores/{{slide}}.zarr",
        annotation=annotation_input,
        config=RESOLVED_CONFIG,
    output:
        f"{OUT}/labels/{{slide}}.parquet",
    params:
        options=label_options,
    log:
        f"{OUT}/logs/label/{{slide}}.log",
    threads: 1
    shell:
        "multimag label {input.store:q} {output:q} {params.options} "
        "--config {input.config:q} > {log} 2>&1"
