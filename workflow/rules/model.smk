rule train_model:
    output:
        model=f"{MODEL_DIR}/model/model.pt",
        metrics=report(
            f"{MODEL_DIR}/model/metrics.json",
            caption="../report/metrics.rst",
            category="Models",
            subcategory="model {model}",
        ),
        components=f"{MODEL_DIR}/model/components.tsv",
    benchmark:
        f"{MODEL_LOGS}/benchmarks/train_model.tsv"
    log:
        f"{MODEL_LOGS}/train_model.log",
    conda:
        ENV
    threads: 2
    resources:
        gpu=GPU_JOBS,
    params:
        library=library("train_model.py"),
        data=config["data"],
        model=model_config,
        components=config["components"],
        kind=KIND,
        features=config["features"],
        examples=config["examples"],
        device=config["device"],
    script:
        "../scripts/train_model.py"


rule select_test_inputs:
    output:
        f"{RESULTS}/inputs.npz",
    log:
        f"{LOGS}/select_test_inputs.log",
    conda:
        ENV
    params:
        library=library("select_test_inputs.py"),
        data=config["data"],
        inputs=config["inputs"],
    script:
        "../scripts/select_test_inputs.py"
