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
        estimator="|".join(e for e in ESTIMATORS if e not in FITTED_WITH),
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
        readouts=lambda wc: {e: estimator_params(e) for e in SHARED_FITS.get(wc.estimator, [])},
        device=config["device"],
    script:
        "../scripts/fit_estimator.py"


# The fits of an estimator trained with another (SHARED_FITS), copied out of that one's job.
rule copy_shared_fit:
    input:
        lambda wc: f"{model_dir(wc.model)}/fits/{FITTED_WITH[wc.estimator]}",
        repairs=repair_logs(f"{MODEL_DIR}/fits/{{estimator}}"),
    output:
        directory(f"{MODEL_DIR}/fits/{{estimator}}"),
    log:
        f"{MODEL_LOGS}/copy_shared_fit/{{estimator}}.log",
    wildcard_constraints:
        estimator="|".join(FITTED_WITH) or "none",
    conda:
        ENV
    params:
        source=lambda wc, input: f"{input[0]}/shared/{wc.estimator}",
    localrule: True
    shell:
        "cp -r {params.source} {output} && echo 'copied from {params.source}' > {log}"


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
