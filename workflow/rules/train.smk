rule train:
    input:
        index=f"{OUT}/indices/fold{{fold}}",
        init=train_init,
    output:
        model=f"{OUT}/models/{{method}}/fold{{fold}}/model.pt",
        meta=f"{OUT}/models/{{method}}/fold{{fold}}/model.json",
    params:
        config=RESOLVED_CONFIG,
        settings=step_settings(config, "train"),
        out_dir=lambda wildcards, output: Path(output.meta).parent,
        init=train_init_option,
        stores=f"{OUT}/stores",
    log:
        f"{OUT}/logs/train/{{method}}/fold{{fold}}.log",
    benchmark:
        f"{OUT}/benchmarks/train/{{method}}/fold{{fold}}.tsv",
    conda:
        "../../envs/torch.yaml"
    threads: config["train"]["threads"]
    resources:
        gpu=1,
        cpus_per_task=lambda wildcards, threads: threads,
        mem_mb=16000,
        runtime=720,
    shell:
        "multimag train {input.index:q} {params.out_dir:q} --method {wildcards.method} "
        "--fold {wildcards.fold} --config {params.config:q} --stores {params.stores:q} "
        "{params.init} --threads {threads} > {log} 2>&1"
