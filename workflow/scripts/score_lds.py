"""Score every train size of one estimator on the held-out masks (per-input Spearman and Pearson)."""

from compattr.analysis import write_lds_csv
from compattr.fitting import load_fit, score_fit
from compattr.io import start_log

log = start_log(snakemake.log[0])
rows = []
for path in snakemake.input.fits:
    coef, intercept, attrs = load_fit(path)
    spearman, pearson = score_fit(coef, intercept, snakemake.params.store)
    log.info(
        "%s n=%d: mean LDS %.3f, mean Pearson %.3f",
        attrs["estimator"],
        attrs["n_train"],
        spearman.mean(),
        pearson.mean(),
    )
    rows += [
        (attrs["estimator"], attrs["n_train"], i, s, p) for i, (s, p) in enumerate(zip(spearman, pearson, strict=True))
    ]
write_lds_csv(snakemake.output[0], rows)
