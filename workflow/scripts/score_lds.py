"""Score every fit of one method on the held-out masks and on the out-of-distribution splits."""

from pathlib import Path

import numpy as np

from compattr.analysis import write_fit_csv, write_lds_csv
from compattr.fitting import predicts_constant, score_fit
from compattr.io import start_log
from compattr.repair import rebuild_on_damage
from compattr.stores import MaskStore, fit_stores, load_fit, read_rows

log = start_log(snakemake.log[0])
rebuild_on_damage(snakemake.input)  # a damaged store this job reads is rebuilt by the next run
heldout_masks = read_rows(snakemake.params.heldout)
# each out-of-distribution split by the ablation rate its store records
ood_stores = [MaskStore.open(path) for path in snakemake.params.ood]
ood_masks = {store.settings()["ablation_rate"]: read_rows(store) for store in ood_stores}
heldout, ood, diagnostics = [], [], []
name = snakemake.params.label  # a prior's fit is labelled as its estimator's point at 0 masks
model = snakemake.params.model
for path in (store for entry in snakemake.input.fits for store in fit_stores(entry)):
    fit = load_fit(path)
    n, replicate = fit.attrs["n_train"], fit.attrs.get("replicate", 0)
    passes = fit.attrs.get("passes", n)  # masks, plus a prior's gradient passes
    labels = (name, model, replicate)
    spearman, pearson = score_fit(fit, *heldout_masks)
    constant = predicts_constant(fit, heldout_masks[0])
    calibration = fit.diagnostics.get("calibration", np.full(len(spearman), np.nan))
    # the priors a regression started from (their fits' paths), or a prior's own fit (it records its settings)
    started = fit.attrs.get("prior")
    if isinstance(started, list):
        priors = [Path(p).stem for p in started]
    else:
        priors = [fit.attrs["estimator"]] if started else []
    chosen = fit.diagnostics.get("prior_index", np.zeros(len(spearman), dtype=int))
    prior = [priors[int(k)] if priors else "" for k in chosen]
    log.info(
        "%s n=%d draw %d: mean LDS %.3f, mean Pearson %.3f; %d failed, %d constant",
        name,
        n,
        replicate,
        spearman.mean(),
        pearson.mean(),
        fit.failed.sum(),
        constant.sum(),
    )
    heldout += [(*labels, n, passes, i, s, p) for i, (s, p) in enumerate(zip(spearman, pearson, strict=True))]
    per_input = zip(fit.failed, constant, calibration, prior, strict=True)
    diagnostics += [(*labels, n, i, *row) for i, row in enumerate(per_input)]
    for rate, rows in ood_masks.items():
        spearman, pearson = score_fit(fit, *rows)
        log.info("%s n=%d at ablation rate %s: mean LDS %.3f", name, n, rate, spearman.mean())
        ood += [(*labels, n, passes, i, s, p, rate) for i, (s, p) in enumerate(zip(spearman, pearson, strict=True))]
write_lds_csv(snakemake.output.heldout, heldout)
write_lds_csv(snakemake.output.ood, ood, ood=True)
write_fit_csv(snakemake.output.fits, diagnostics)
