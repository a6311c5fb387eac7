# Re-verify every finished store (after copying results, say):
# `snakemake verify --cores N --configfile ...`. It has no output, so it runs whenever asked and no
# other job depends on it: nothing intact is rebuilt, and what is damaged is logged for the next plain
# run to rebuild (compattr.repair).
rule verify:
    input:
        summaries=verify_summaries,
        fits=verify_fits,
    log:
        f"{LOGS}/verify.log",
    conda:
        ENV
    params:
        library=library("verify_stores.py"),
    script:
        "../scripts/verify_stores.py"
