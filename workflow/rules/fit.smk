# One job per model and estimator fits every train size on every disjoint draw of training masks:
# most fits take less time than starting a process.
rule fit_estimator:
    input:
        unpack(prior_input),
        summary=f"{MODEL_DIR}/ablations/train.summary.json",
        repairs=repair_logs(f"{MODEL_DIR}/fits/{{estimator}}"),
    output:
        directory(f"{MODEL_DIR}/fits/{{estimator}}"),
    benchmark:
        f"{MODEL_LOGS}/benchmarks/fit_estimator/{{estimator}}.tsv"
    log:
        f"{MODEL_LOGS}/fit_estimator/{{estimator}}.log",
    wildcard_constraints:
        estimator="|".join(ESTIMATORS),
    conda:
        ENV
    # One thread: a second barely speeds up a fit (1.1x for the 2-layer ones), and on 2 cores two fits
    # then run side by side.
    threads: 1
    # The longest jobs first (the 2-layer fits), so the short ones fill the gaps at the end.
    priority: lambda wc: 1 if wc.estimator in TWO_LAYER_ESTIMATORS else 0
    resources:
        gpu=GPU_JOBS,
    params:
        library=library("fit_estimator.py"),
        store=lambda wc: store_path(wc.model, "train"),
        estimator=lambda wc: wc.estimator,
        model=lambda wc: int(wc.model),
        sizes=TRAIN_SIZES,
        replicates=MASK_DRAWS,
        estimator_params=lambda wc: estimator_params(wc.estimator),
        device=config["device"],
    script:
        "../scripts/fit_estimator.py"


rule fit_baseline:
    input:
        model=rules.train_model.output.model,
        inputs=rules.select_test_inputs.output[0],
        repairs=repair_logs(f"{MODEL_DIR}/baselines/{{baseline}}.zarr"),
    output:
        directory(f"{MODEL_DIR}/baselines/{{baseline}}.zarr"),
    benchmark:
        f"{MODEL_LOGS}/benchmarks/fit_baseline/{{baseline}}.tsv"
    log:
        f"{MODEL_LOGS}/fit_baseline/{{baseline}}.log",
    wildcard_constraints:
        baseline="|".join(BASELINE_FITS) or "none",
    conda:
        ENV
    threads: 1
    # Short jobs that the prior estimators wait for: run them early.
    priority: 2
    resources:
        gpu=GPU_JOBS,
    params:
        library=library("fit_baseline.py"),
        baseline=lambda wc: wc.baseline,
        prior=lambda wc: PRIORS.get(wc.baseline),
        ablation_rate=config["sampling"]["ablation_rate"],
        model=lambda wc: int(wc.model),
        batch_size=config["sampling"]["batch_size"],
        forward=FORWARD,
        device=config["device"],
    script:
        "../scripts/fit_baseline.py"
