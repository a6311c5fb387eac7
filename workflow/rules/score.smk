rule score_lds:
    input:
        fits=expand(f"{RESULTS}/fits/{{{{estimator}}}}/n{{n}}.zarr", n=TRAIN_SIZES),
        summary=f"{RESULTS}/ablations/heldout.summary.json",
    output:
        f"{RESULTS}/lds/{{estimator}}.csv",
    log:
        f"{LOGS}/score_lds/{{estimator}}.log",
    conda:
        ENV
    params:
        store=f"{RESULTS}/ablations/heldout.zarr",
    script:
        "../scripts/score_lds.py"


rule summarize_lds:
    input:
        expand(f"{RESULTS}/lds/{{estimator}}.csv", estimator=ESTIMATORS),
    output:
        lds=report(f"{RESULTS}/lds.csv", caption="../report/lds.rst", category="Tables"),
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
        rules.summarize_lds.output.lds,
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
    script:
        "../scripts/plot_lds.py"
