rule evaluate:
    input:
        predictions=lambda wildcards: expand(f"{OUT}/predictions/{{method}}/{{slide}}.parquet",
                                             method=PREDICTED, slide=samples().index),
        verdicts=expand(f"{OUT}/{{method}}/slides.tsv", method=PREDICTED),
        splits=f"{OUT}/splits.tsv",
    output:
        summary=report(f"{OUT}/summary.tsv", category="Results", caption="../report/summary.rst"),
        markdown=f"{OUT}/summary.md",
        table=report(f"{OUT}/summary.html", category="Results",
                     caption="../report/summary_table.rst"),
        voting=report(f"{OUT}/voting.tsv", category="Results", caption="../report/voting.rst"),
        voting_markdown=f"{OUT}/voting.md",
        metrics=expand(f"{OUT}/{{method}}/metrics.tsv", method=PREDICTED),
    params:
        config=RESOLVED_CONFIG,
        settings=step_settings(config, "evaluate"),
        predictions=[f"{OUT}/predictions/{method}" for method in PREDICTED],
        out_dir=lambda wildcards, output: Path(output.summary).parent,
    log:
        f"{OUT}/logs/evaluate.log",
    conda:
        "../../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=lambda wildcards, attempt: 2000 * attempt,
        runtime=lambda wildcards, attempt: 30 * attempt,
        cpus_per_task=1,
    shell:
        "multimag evaluate {input.splits:q} {params.out_dir:q} {params.predictions:q} "
        "--config {params.config:q} > {log} 2>&1"
