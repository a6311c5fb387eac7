"""Score every fit of one method on the held-out masks and on the out-of-distribution splits."""

from compattr.analysis import write_lds_csv
from compattr.fitting import load_fit, score_fit
from compattr.io import start_log
from compattr.sampling import read_rows

log = start_log(snakemake.log[0])
heldout_masks = read_rows(snakemake.params.heldout)
ood_masks = {alpha: read_rows(store) for alpha, store in snakemake.params.ood.items()}
heldout, ood = [], []
name = snakemake.params.label  # a prior's fit is labelled as its estimator's point at n_train 0
for path in snakemake.input.fits:
    fit = load_fit(path)
    n = fit.attrs["n_train"]
    spearman, pearson = score_fit(fit, *heldout_masks)
    log.info("%s n=%d: mean LDS %.3f, mean Pearson %.3f", name, n, spearman.mean(), pearson.mean())
    heldout += [(name, n, i, s, p) for i, (s, p) in enumerate(zip(spearman, pearson, strict=True))]
    for alpha, rows in ood_masks.items():
        spearman, pearson = score_fit(fit, *rows)
        log.info("%s n=%d at alpha %s: mean LDS %.3f", name, n, alpha, spearman.mean())
        ood += [(name, n, i, s, p, alpha) for i, (s, p) in enumerate(zip(spearman, pearson, strict=True))]
write_lds_csv(snakemake.output.heldout, heldout)
write_lds_csv(snakemake.output.ood, ood, alpha=True)
