rule init_ablation_store:
    input:
        model=rules.train_model.output.model,
        inputs=rules.select_test_inputs.output[0],
    output:
        group=f"{MODEL_DIR}/ablations/{{split}}.zarr/zarr.json",
        masks=f"{MODEL_DIR}/ablations/{{split}}.zarr/masks/zarr.json",
        margins=f"{MODEL_DIR}/ablations/{{split}}.zarr/margins/zarr.json",
    log:
        f"{MODEL_LOGS}/init_ablation_store/{{split}}.log",
    conda:
        ENV
    params:
        library=library("init_ablation_store.py"),
        store=lambda wc: store_path(wc.model, wc.split),
        n_masks=lambda wc: split_settings(wc.split)["n_masks"],
        ablation_rate=lambda wc: split_settings(wc.split)["ablation_rate"],
        seed=lambda wc: split_settings(wc.split)["seed"],
        shard_size=config["sampling"]["shard_size"],
        provenance=store_provenance,
    script:
        "../scripts/init_ablation_store.py"


rule sample_ablation_shard:
    input:
        model=rules.train_model.output.model,
        inputs=rules.select_test_inputs.output[0],
        store=rules.init_ablation_store.output.group,
    output:
        f"{MODEL_DIR}/ablations/{{split}}.shards/{{shard}}.json",
    benchmark:
        f"{MODEL_LOGS}/benchmarks/sample_ablation_shard/{{split}}.{{shard}}.tsv"
    log:
        f"{MODEL_LOGS}/sample_ablation_shard/{{split}}.{{shard}}.log",
    conda:
        ENV
    threads: 1
    resources:
        gpu=GPU_JOBS,
    params:
        library=library("sample_ablation_shard.py"),
        store=lambda wc: store_path(wc.model, wc.split),
        # the config's settings, which the store must record (a store that disagrees is an error)
        ablation_rate=lambda wc: split_settings(wc.split)["ablation_rate"],
        seed=lambda wc: split_settings(wc.split)["seed"],
        batch_size=config["sampling"]["batch_size"],
        forward=FORWARD,
        device=config["device"],
    script:
        "../scripts/sample_ablation_shard.py"


rule check_ablation_store:
    input:
        shards=shard_flags,
        store=rules.init_ablation_store.output.group,
        repairs=repair_logs(f"{MODEL_DIR}/ablations/{{split}}.summary.json"),
    output:
        f"{MODEL_DIR}/ablations/{{split}}.summary.json",
    log:
        f"{MODEL_LOGS}/check_ablation_store/{{split}}.log",
    conda:
        ENV
    params:
        library=library("check_ablation_store.py"),
        store=lambda wc: store_path(wc.model, wc.split),
        ablation_rate=lambda wc: split_settings(wc.split)["ablation_rate"],
        seed=lambda wc: split_settings(wc.split)["seed"],
    script:
        "../scripts/check_ablation_store.py"
