"""Draw each study's LDS against its perturbed evaluations, one panel per kind of unit."""

import matplotlib

matplotlib.use("Agg")  # figures go to files; no display

from pathlib import Path  # noqa: E402

from compattr.analysis import read_lds_csv  # noqa: E402
from compattr.io import start_log  # noqa: E402
from compattr.plots import plot_unified  # noqa: E402
from compattr.stores import measured_units  # noqa: E402

log = start_log(snakemake.log[0])
cfg = snakemake.params.analysis
studies = {}
for (study, kind), path in zip(snakemake.params.studies.items(), snakemake.input.lds, strict=True):
    # a prior that measures its largest units by ablation sits at those evaluations (its settings are
    # the same on every model of a study: the first model's stores say them)
    measured = measured_units(Path(path).parent / "m0" / "baselines")
    log.info("%s: units measured by the priors %s", study, measured)
    studies[f"{study} ({kind})"] = (kind, read_lds_csv(path, by="evaluations", measured=measured))
fig = plot_unified(studies, n_bootstrap=cfg["n_bootstrap"], ci=cfg["ci"], seed=cfg["seed"])
# The legend and title may be wider than the panels: the saved figure takes them whole.
fig.savefig(snakemake.output.png, dpi=150, bbox_inches="tight")
fig.savefig(snakemake.output.pdf, bbox_inches="tight")
log.info("wrote %s and %s for %s", snakemake.output.png, snakemake.output.pdf, list(studies))
