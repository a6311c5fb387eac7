rule fit_sweep:
    input:
        unpack(prior_input),
        summary=f"{RESULTS}/ablations/train.summary.json",
    output:
        directory(f"{RESULTS}/sweep/fits/{{setting}}/n{{n}}.zarr"),
    log:
        f"{LOGS}/fit_sweep/{{setting}}.n{{n}}.log",
    conda:
        ENV
    threads: 2
    params:
        store=store_path("train"),
        estimator=SWEEP["estimator"],
        label=lambda wc: wc.setting,
        n_train=lambda wc: int(wc.n),
        estimator_params=sweep_params,
        device=config["device"],
    script:
        "../scripts/fit_estimator.py"


rule score_sweep:
    input:
        fits=expand(f"{RESULTS}/sweep/fits/{{{{setting}}}}/n{{n}}.zarr", n=SWEEP_SIZES),
        summary=f"{RESULTS}/ablations/heldout.summary.json",
    output:
        heldout=f"{RESULTS}/sweep/lds/{{setting}}.csv",
        ood=f"{RESULTS}/sweep/lds/{{setting}}.ood.csv",
        fits=f"{RESULTS}/sweep/lds/{{setting}}.fits.csv",
    log:
        f"{LOGS}/score_sweep/{{setting}}.log",
    conda:
        ENV
    params:
        label=lambda wc: wc.setting,
        heldout=store_path("heldout"),
        ood={},
    script:
        "../scripts/score_lds.py"


rule summarize_sweep:
    input:
        lds=expand(f"{RESULTS}/sweep/lds/{{setting}}.csv", setting=SWEEP["settings"]),
        fits=expand(
            f"{RESULTS}/sweep/fits/{{setting}}/n{{n}}.zarr",
            setting=SWEEP["settings"],
            n=SWEEP_SIZES,
        ),
        reference=rules.summarize_lds.output.lds,
    output:
        lds=f"{RESULTS}/sweep/lds.csv",
        selection=report(
            f"{RESULTS}/sweep/selection.csv",
            caption="../report/sweep.rst",
            category="Sweep",
        ),
        markdown=f"{RESULTS}/sweep/summary.md",
        png=report(
            f"{RESULTS}/sweep/lds_vs_ablations.png",
            caption="../report/sweep.rst",
            category="Sweep",
        ),
    log:
        f"{LOGS}/summarize_sweep.log",
    conda:
        ENV
    params:
        estimator=SWEEP["estimator"],
        settings=SWEEP["settings"],
        analysis=config["analysis"],
        study=STUDY,
    script:
        "../scripts/summarize_sweep.py"


rule sweep:
    input:
        rules.summarize_sweep.output,
