"""Draw LDS against the number of ablated forward passes, one line per estimator, OOD panels too."""

import matplotlib

matplotlib.use("Agg")  # figures go to files; no display

from pathlib import Path  # noqa: E402

from compattr.analysis import read_lds_csv, read_ood_csv, resampled_sources  # noqa: E402
from compattr.io import start_log  # noqa: E402
from compattr.plots import plot_headline, plot_lds_vs_ablations  # noqa: E402

KINDS = {"components": "component", "features": "feature", "data": "data"}
log = start_log(snakemake.log[0])
p = snakemake.params
cfg = snakemake.params.analysis
table = read_lds_csv(snakemake.input.lds)
cost = (
    {"cost": "models trained (one per mask, one per unit for leave-one-out)"} if snakemake.params.kind == "data" else {}
)
n_components = len(Path(snakemake.input.components).read_text().splitlines()) - 1  # a header, then one per component
fig = plot_lds_vs_ablations(
    table,
    ood=read_ood_csv(snakemake.input.ood),
    baselines=snakemake.params.baselines,
    targets=cfg["lds_targets"],
    ablation_rate=snakemake.params.ablation_rate,
    n_bootstrap=cfg["n_bootstrap"],
    ci=cfg["ci"],
    seed=cfg["seed"],
    title=f"{snakemake.params.study}: {KINDS[p.kind]} attribution; intervals over {resampled_sources(table)}",
    per_component=n_components if cfg.get("x_axis") == "masks_per_component" else None,
    **cost,
)
# The legend and title may be wider than the panels: the saved figure takes them whole.
fig.savefig(snakemake.output.png, dpi=150, bbox_inches="tight")
fig.savefig(snakemake.output.pdf, bbox_inches="tight")
log.info("wrote %s and %s", snakemake.output.png, snakemake.output.pdf)
headline = plot_headline(
    table,
    priors=[name for name in snakemake.params.baselines if name != "loo"],
    targets=cfg["lds_targets"],
    n_bootstrap=cfg["n_bootstrap"],
    ci=cfg["ci"],
    seed=cfg["seed"],
    title=f"{snakemake.params.study}: the seed's comparison (all methods: lds_vs_ablations.png)",
    **cost,
)
headline.savefig(snakemake.output.headline, dpi=150)
log.info("wrote %s", snakemake.output.headline)
