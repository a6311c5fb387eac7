rule fit_estimator:
    input:
        unpack(prior_input),
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


rule fit_baseline:
    input:
        model=rules.train_model.output.model,
        inputs=rules.select_test_inputs.output[0],
    output:
        directory(f"{RESULTS}/fits/{{baseline}}/baseline.zarr"),
    log:
        f"{LOGS}/fit_baseline/{{baseline}}.log",
    wildcard_constraints:
        baseline="|".join(BASELINE_FITS) or "none",
    conda:
        ENV
    threads: 2
    params:
        baseline=lambda wc: wc.baseline,
        batch_size=config["sampling"]["batch_size"],
        forward=FORWARD,
        device=config["device"],
    script:
        "../scripts/fit_baseline.py"
