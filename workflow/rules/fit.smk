rule fit_estimator:
    input:
        summary=f"{RESULTS}/ablations/train.summary.json",
    output:
        directory(f"{RESULTS}/fits/{{estimator}}/n{{n}}.zarr"),
    log:
        f"{LOGS}/fit_estimator/{{estimator}}.n{{n}}.log",
    conda:
        ENV
    threads: 2
    params:
        store=f"{RESULTS}/ablations/train.zarr",
        estimator=lambda wc: wc.estimator,
        n_train=lambda wc: int(wc.n),
        estimator_params=lambda wc: config["fit"]["estimators"][wc.estimator],
        device=config["device"],
    script:
        "../scripts/fit_estimator.py"
