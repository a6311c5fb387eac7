rule score_lds:
    input:
        fits=method_fits,
        summaries=expand(
            f"{RESULTS}/ablations/{{split}}.summary.json",
            split=["heldout", *OOD_SPLITS],
        ),
    output:
        heldout=f"{RESULTS}/lds/{{estimator}}.csv",
        ood=f"{RESULTS}/lds/{{estimator}}.ood.csv",
        fits=f"{RESULTS}/lds/{{estimator}}.fits.csv",
    log:
        f"{LOGS}/score_lds/{{estimator}}.log",
    conda:
        ENV
    params:
        label=lambda wc: wc.estimator,
        heldout=store_path("heldout"),
        ood={alpha: store_path(split) for alpha, split in zip(OOD_ALPHAS, OOD_SPLITS)},
    script:
        "../scripts/score_lds.py"


rule summarize_lds:
    input:
        heldout=expand(f"{RESULTS}/lds/{{estimator}}.csv", estimator=METHODS),
        ood=expand(f"{RESULTS}/lds/{{estimator}}.ood.csv", estimator=METHODS),
        fits=expand(f"{RESULTS}/lds/{{estimator}}.fits.csv", estimator=METHODS),
        components=rules.train_model.output.components,
        baselines=expand(
            f"{RESULTS}/fits/{{baseline}}/baseline.zarr", baseline=BASELINES
        ),
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
        markdown=f"{RESULTS}/summary.md",
    log:
        f"{LOGS}/summarize_lds.log",
    conda:
        ENV
    params:
        analysis=config["analysis"],
        study=STUDY,
    script:
        "../scripts/summarize_lds.py"


rule plot_lds:
    input:
        lds=rules.summarize_lds.output.lds,
        ood=rules.summarize_lds.output.ood,
        components=rules.train_model.output.components,
    output:
        png=report(
            f"{RESULTS}/figures/lds_vs_ablations.png",
            caption="../report/lds_vs_ablations.rst",
            category="Figures",
        ),
        pdf=f"{RESULTS}/figures/lds_vs_ablations.pdf",
    log:
        f"{LOGS}/plot_lds.log",
    conda:
        ENV
    params:
        analysis=config["analysis"],
        study=STUDY,
        baselines=BASELINES,
        alpha=config["sampling"]["alpha"],
    script:
        "../scripts/plot_lds.py"
