rule figures:
    """The report's pictures of one method: ROC per fold with the mean, confusion,
    t-SNE of the test embeddings, and per slide a heatmap and a QuPath GeoJSON."""
    input:
        predictions=method_predictions,
        splits=f"{OUT}/splits.tsv",
        tissue=lambda wildcards: expand(f"{OUT}/tissue/{{slide}}.npz", slide=samples().index),
        samples=config["samples"],
    output:
        roc=report(f"{OUT}/{{method}}/figures/roc.png", category="{method}",
                   subcategory="Patch level", caption="../report/roc.rst"),
        confusion=report(f"{OUT}/{{method}}/figures/confusion.png", category="{method}",
                         subcategory="Patch level", caption="../report/confusion.rst"),
        tsne=report(f"{OUT}/{{method}}/figures/tsne.png", category="{method}",
                    subcategory="Patch level", caption="../report/tsne.rst"),
        heatmaps=report(directory(f"{OUT}/{{method}}/figures/heatmaps"), patterns=["{slide}.png"],
                        category="{method}", subcategory="Slide heatmaps",
                        caption="../report/heatmap.rst"),
        qupath=directory(f"{OUT}/{{method}}/figures/qupath"),
    params:
        config=RESOLVED_CONFIG,
        settings=step_settings(config, "figures"),
        predictions=lambda wildcards: f"{OUT}/predictions/{wildcards.method}",
        tissue_dir=f"{OUT}/tissue",
        out_dir=lambda wildcards: f"{OUT}/{wildcards.method}/figures",
    log:
        f"{OUT}/logs/figures/{{method}}.log",
    conda:
        "../../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=lambda wildcards, attempt: 4000 * attempt,
        runtime=lambda wildcards, attempt: 30 * attempt,
        cpus_per_task=1,
    shell:
        "multimag figures {params.predictions:q} {input.splits:q} {params.tissue_dir:q} "
        "{params.out_dir:q} --samples {input.samples:q} --config {params.config:q} "
        "--no-progress > {log} 2>&1"
