"""Collect the editing tables; draw their figures; write the editing summary (does a higher LDS buy better edits?)."""

import matplotlib

matplotlib.use("Agg")  # figures go to files; no display

from pathlib import Path  # noqa: E402

from compattr.analysis import concat_csv, markdown_table, read_lds_csv  # noqa: E402
from compattr.editing import (  # noqa: E402
    FORGET_COLUMNS,
    TOP_K_COLUMNS,
    editing_summary,
    forgetting_summary,
    read_rows,
)
from compattr.io import start_log  # noqa: E402
from compattr.plots import plot_forgetting, plot_top_k  # noqa: E402

log = start_log(snakemake.log[0])
out, p = snakemake.output, snakemake.params
concat_csv(snakemake.input.top_k, out.top_k)
concat_csv(snakemake.input.forget, out.forget)
top_k, forget = read_rows(out.top_k, TOP_K_COLUMNS), read_rows(out.forget, FORGET_COLUMNS)
for fig, path in ((plot_top_k(top_k, seed=p.seed), out.top_k_png), (plot_forgetting(forget), out.forget_png)):
    fig.savefig(path, dpi=150, bbox_inches="tight")  # the legend sits outside the axes
lds = read_lds_csv(snakemake.input.lds)
mean_lds = {  # by method and passes, as the LDS table keeps them
    (method, int(n)): score
    for method in lds.estimators
    for n, score in zip(lds.sizes[method], lds.mean_curve(method), strict=True)
}
k = max([kk for kk in p.ks if kk <= p.summary_k] or [min(p.ks)])  # the grid's k nearest the summary's, from below
rows, rho, n_pairs = editing_summary(top_k, mean_lds, k)
text = [
    f"# {p.study}: editing with attributions",
    "",
    f"Top-k ablation at k = {k}: mean over inputs and models of the true and predicted margin drop and the",
    "fraction of predictions flipped, per method and train size (replicate 0 of each size).",
    "",
    markdown_table(rows, ["method", "n_train", "passes", "true_drop", "predicted_drop", "flipped", "lds"]),
    "",
    f"Spearman correlation across methods and sizes between mean LDS and mean true drop at k = {k}: "
    f"{rho:+.3f} ({n_pairs} pairs).",
    "",
    f"Forgetting a class at k = {k} (each method's largest train size; mean over classes and models, on test",
    "images that chose no component): accuracy on the forgotten class and on the others, unedited and edited.",
    "",
    markdown_table(
        forgetting_summary(forget, k), ["method", "class_before", "class_after", "others_before", "others_after"]
    ),
    "",
]
Path(out.markdown).write_text("\n".join(text))
log.info("editing summary: k=%d, rho=%.3f over %d pairs", k, rho, n_pairs)
