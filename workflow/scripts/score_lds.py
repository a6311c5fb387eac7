"""Score every fit of every method of one model on the held-out masks and on the out-of-distribution splits."""

from compattr.analysis import write_fit_csv, write_lds_csv
from compattr.fitting import score_method
from compattr.io import start_log
from compattr.repair import rebuild_on_damage
from compattr.stores import MaskStore, read_rows

log = start_log(snakemake.log[0])
rebuild_on_damage(snakemake.input)  # a damaged store this job reads is rebuilt by the next run
heldout = read_rows(snakemake.params.heldout)
# each out-of-distribution split by the ablation rate its store records
ood_stores = [MaskStore.open(path) for path in snakemake.params.ood]
ood = {store.settings()["ablation_rate"]: read_rows(store) for store in ood_stores}
out = snakemake.output
methods = snakemake.params.methods  # {label: fits}, in the order of the outputs
tables = zip(out.heldout, out.ood, out.fits, strict=True)
for (name, entries), (heldout_csv, ood_csv, fits_csv) in zip(methods.items(), tables, strict=True):
    scored, scored_ood, diagnostics = score_method(name, snakemake.params.model, entries, heldout, ood, log)
    write_lds_csv(heldout_csv, scored)
    write_lds_csv(ood_csv, scored_ood, ood=True)
    write_fit_csv(fits_csv, diagnostics)
