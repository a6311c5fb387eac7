rule train_model:
    output:
        model=f"{RESULTS}/model/model.pt",
        metrics=f"{RESULTS}/model/metrics.json",
        components=f"{RESULTS}/model/components.tsv",
    log:
        f"{LOGS}/train_model.log",
    conda:
        ENV
    threads: 2
    params:
        data=config["data"],
        model=config["model"],
        components=config["components"],
        device=config["device"],
    script:
        "../scripts/train_model.py"


rule select_test_inputs:
    output:
        f"{RESULTS}/model/inputs.npz",
    log:
        f"{LOGS}/select_test_inputs.log",
    conda:
        ENV
    params:
        data=config["data"],
        inputs=config["inputs"],
    script:
        "../scripts/select_test_inputs.py"
