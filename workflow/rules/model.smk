rule train_model:
    output:
        model=f"{RESULTS}/model/model.pt",
        metrics=f"{RESULTS}/model/metrics.json",
        components=f"{RESULTS}/model/components.tsv",
    params:
        data=config["data"],
        model=config["model"],
        components=config["components"],
        device=config["device"],
    log:
        f"{LOGS}/train_model.log",
    threads: 2
    conda:
        ENV
    script:
        "../scripts/train_model.py"


rule select_test_inputs:
    output:
        f"{RESULTS}/model/inputs.npz",
    params:
        data=config["data"],
        inputs=config["inputs"],
    log:
        f"{LOGS}/select_test_inputs.log",
    conda:
        ENV
    script:
        "../scripts/select_test_inputs.py"
