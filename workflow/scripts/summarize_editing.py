"""Collect the editing tables of every model and draw their figures (the summary is part of summary.md)."""

import matplotlib

matplotlib.use("Agg")  # figures go to files; no display

from compattr.analysis import (
    concat_csv,  # noqa: E402
    read_table,  # noqa: E402
)
from compattr.editing import FIX_COLUMNS, FORGET_COLUMNS, TOP_K_COLUMNS  # noqa: E402
from compattr.io import start_log  # noqa: E402
from compattr.plots import plot_fixing, plot_forgetting, plot_top_k  # noqa: E402

log = start_log(snakemake.log[0])
out, p = snakemake.output, snakemake.params
for table in ("top_k", "fix", "forget"):
    concat_csv(snakemake.input[table], out[table])
top_k, fix = read_table(out.top_k, TOP_K_COLUMNS), read_table(out.fix, FIX_COLUMNS)
forget = read_table(out.forget, FORGET_COLUMNS)
figures = (
    (plot_top_k(top_k, seed=p.seed), out.top_k_png),
    (plot_fixing(fix, seed=p.seed), out.fix_png),
    (plot_forgetting(forget), out.forget_png),
)
for fig, path in figures:
    fig.savefig(path, dpi=150, bbox_inches="tight")  # the legend sits outside the axes
log.info("editing: %d top-k, %d fixing and %d forgetting rows", len(top_k), len(fix), len(forget))
