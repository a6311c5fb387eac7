# The sweep runs on the first model, on the first draw of training masks at each size.
rule fit_sweep:
    input:
        unpack(prior_input),
        summary=f"{RESULTS}/m0/ablations/train.summary.json",
        repairs=repair_logs(f"{RESULTS}/m0/sweep/fits/{{setting}}"),
    output:
        directory(f"{RESULTS}/m0/sweep/fits/{{setting}}"),
    benchmark:
        f"{LOGS}/m0/benchmarks/fit_sweep/{{setting}}.tsv"
    log:
        f"{LOGS}/m0/fit_sweep/{{setting}}.log",
    conda:
        ENV
    threads: 1
    resources:
        gpu=GPU_JOBS,
    params:
        library=library("fit_estimator.py"),
        store=store_path(0, "train"),
        estimator=SWEEP["estimator"],
        label=lambda wc: wc.setting,
        model=0,
        sizes=SWEEP_SIZES,
        replicates=1,
        estimator_params=sweep_params,
        device=config["device"],
    script:
        "../scripts/fit_estimator.py"


# One job scores every setting's fits.
rule score_sweep:
    input:
        fits=expand(f"{RESULTS}/m0/sweep/fits/{{setting}}", setting=SWEEP["settings"]),
        summary=f"{RESULTS}/m0/ablations/heldout.summary.json",
    output:
        heldout=expand(f"{RESULTS}/m0/sweep/lds/{{setting}}.csv", setting=SWEEP["settings"]),
        ood=expand(f"{RESULTS}/m0/sweep/lds/{{setting}}.ood.csv", setting=SWEEP["settings"]),
        fits=expand(f"{RESULTS}/m0/sweep/lds/{{setting}}.fits.csv", setting=SWEEP["settings"]),
    log:
        f"{LOGS}/m0/score_sweep.log",
    conda:
        ENV
    params:
        library=library("score_lds.py"),
        methods={setting: [f"{RESULTS}/m0/sweep/fits/{setting}"] for setting in SWEEP["settings"]},
        model=0,
        heldout=store_path(0, "heldout"),
        ood=[],
    script:
        "../scripts/score_lds.py"


rule summarize_sweep:
    input:
        lds=expand(f"{RESULTS}/m0/sweep/lds/{{setting}}.csv", setting=SWEEP["settings"]),
        fits=expand(f"{RESULTS}/m0/sweep/fits/{{setting}}", setting=SWEEP["settings"]),
        reference=rules.summarize_lds.output.lds,
    output:
        lds=f"{RESULTS}/m0/sweep/lds.csv",
        selection=report(
            f"{RESULTS}/m0/sweep/selection.csv",
            caption="../report/sweep.rst",
            category="Sweep",
        ),
        markdown=f"{RESULTS}/m0/sweep/summary.md",
        png=report(
            f"{RESULTS}/m0/sweep/lds_vs_ablations.png",
            caption="../report/sweep.rst",
            category="Sweep",
        ),
    log:
        f"{LOGS}/m0/summarize_sweep.log",
    conda:
        ENV
    params:
        library=library("summarize_sweep.py"),
        estimator=SWEEP["estimator"],
        settings=SWEEP["settings"],
        analysis=config["analysis"],
        study=STUDY,
    script:
        "../scripts/summarize_sweep.py"


rule sweep:
    input:
        rules.summarize_sweep.output,
