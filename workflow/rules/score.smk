# One job per model scores every method's fits: each method's scoring takes less time than starting a process.
rule score_lds:
    input:
        fits=model_fits,
        summaries=split_summaries,
    output:
        heldout=expand(f"{MODEL_DIR}/lds/{{method}}.csv", method=METHODS, allow_missing=True),
        ood=expand(f"{MODEL_DIR}/lds/{{method}}.ood.csv", method=METHODS, allow_missing=True),
        fits=expand(f"{MODEL_DIR}/lds/{{method}}.fits.csv", method=METHODS, allow_missing=True),
    log:
        f"{MODEL_LOGS}/score_lds.log",
    conda:
        ENV
    params:
        library=library("score_lds.py"),
        methods=lambda wc: {method: fits_of(wc.model, method) for method in METHODS},
        model=lambda wc: int(wc.model),
        heldout=lambda wc: store_path(wc.model, "heldout"),
        ood=lambda wc: [store_path(wc.model, split) for split in OOD_SPLITS],
    script:
        "../scripts/score_lds.py"


rule summarize_lds:
    input:
        heldout=expand(f"{RESULTS}/m{{model}}/lds/{{estimator}}.csv", model=MODELS, estimator=METHODS),
        ood=expand(f"{RESULTS}/m{{model}}/lds/{{estimator}}.ood.csv", model=MODELS, estimator=METHODS),
        fits=expand(f"{RESULTS}/m{{model}}/lds/{{estimator}}.fits.csv", model=MODELS, estimator=METHODS),
        components=f"{RESULTS}/m0/model/components.tsv",
        baselines=expand(f"{RESULTS}/m{{model}}/baselines/{{baseline}}.zarr", model=MODELS, baseline=SAMPLING_FREE),
        **editing_tables(),
    output:
        lds=report(f"{RESULTS}/lds.csv", caption="../report/lds.rst", category="Tables"),
        ood=report(
            f"{RESULTS}/lds_ood.csv",
            caption="../report/lds_ood.rst",
            category="Tables",
        ),
        summary=report(
            f"{RESULTS}/summary.csv",
            caption="../report/summary.rst",
            category="Tables",
        ),
        markdown=report(f"{RESULTS}/summary.md", caption="../report/summary_md.rst", category="Tables"),
    log:
        f"{LOGS}/summarize_lds.log",
    conda:
        ENV
    params:
        library=library("summarize_lds.py"),
        analysis=config["analysis"],
        study=STUDY,
        kind=KIND,
        priors=list(PRIORS),
        train_sizes=TRAIN_SIZES,
        editing_ks=EDITING["ks"],
        editing_k=10,  # the summary's editing section reports this k (or the grid's nearest below)
        # gradient_prior's prior, when it has one (with several it chooses per input)
        gradient_prior=(
            estimator_priors("gradient_prior")[0]
            if "gradient_prior" in ESTIMATORS and len(estimator_priors("gradient_prior")) == 1
            else None
        ),
    script:
        "../scripts/summarize_lds.py"


rule plot_lds:
    input:
        lds=rules.summarize_lds.output.lds,
        ood=rules.summarize_lds.output.ood,
        components=f"{RESULTS}/m0/model/components.tsv",
    output:
        png=report(
            f"{RESULTS}/figures/lds_vs_ablations.png",
            caption="../report/lds_vs_ablations.rst",
            category="Figures",
        ),
        pdf=f"{RESULTS}/figures/lds_vs_ablations.pdf",
        headline=report(
            f"{RESULTS}/figures/lds_headline.png",
            caption="../report/lds_headline.rst",
            category="Figures",
        ),
    log:
        f"{LOGS}/plot_lds.log",
    conda:
        ENV
    params:
        library=library("plot_lds.py"),
        analysis=config["analysis"],
        study=STUDY,
        kind=KIND,
        baselines=SAMPLING_FREE,
        ablation_rate=config["sampling"]["ablation_rate"],
    script:
        "../scripts/plot_lds.py"


rule top_components:
    input:
        top_components_fit,
    output:
        f"{MODEL_DIR}/top_components.csv",
    log:
        f"{MODEL_LOGS}/top_components.log",
    conda:
        ENV
    params:
        library=library("top_components.py"),
        method=TOP_METHOD,
        k=TOP["k"],
        fit=lambda wc: top_components_store(wc.model),
    script:
        "../scripts/top_components.py"
