# One figure for the three kinds of unit (target `unified`, not part of `all`): each study's LDS against
# its perturbed evaluations. The studies are run first, each with its own config (`make unified`).


rule unified:
    input:
        lds=[f"results/{study}/lds.csv" for study in UNIFIED],
    output:
        png=report(
            "results/unified/lds_vs_perturbations.png",
            caption="../report/unified.rst",
            category="Figures",
        ),
        pdf="results/unified/lds_vs_perturbations.pdf",
    log:
        "logs/unified.log",
    conda:
        ENV
    params:
        library=library("plot_unified.py"),
        studies=UNIFIED,
        analysis=config["analysis"],
    script:
        "../scripts/plot_unified.py"
