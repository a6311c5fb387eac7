"""Collect the per-method LDS tables; tabulate passes needed per LDS target, with reductions; compare the priors."""

import csv
from collections import defaultdict
from pathlib import Path

import numpy as np

from compattr.analysis import (
    ceiling_targets,
    cheapest_markdown,
    coefficient_agreement,
    concat_csv,
    curve_dips,
    error_by_module,
    fit_quality_markdown,
    fit_quality_rows,
    grouped_gain_markdown,
    grouped_markdown,
    markdown_table,
    read_lds_csv,
    resampled_sources,
    summary_markdown,
    summary_rows,
)
from compattr.editing import FIX_COLUMNS, FORGET_COLUMNS, TOP_K_COLUMNS, read_rows, summary_section
from compattr.io import start_log
from compattr.stores import load_fit

log = start_log(snakemake.log[0])
cfg = snakemake.params.analysis
concat_csv(snakemake.input.heldout, snakemake.output.lds)
concat_csv(snakemake.input.ood, snakemake.output.ood)
table = read_lds_csv(snakemake.output.lds)
references = cfg["references"]
ceiling, headings = ceiling_targets(table, cfg["ceiling_fractions"])
log.info("ceiling (best mean LDS at the largest train size): %.3f", ceiling)
rows = summary_rows(
    table,
    [*cfg["lds_targets"], *headings],
    cfg["n_bootstrap"],
    cfg["ci"],
    cfg["seed"],
    references=references,
    linear=cfg["linear_baselines"],
)
with open(snakemake.output.summary, "w", newline="") as fh:
    writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows({k: ("" if isinstance(v, float) and np.isnan(v) else v) for k, v in r.items()} for r in rows)

n_components = len(Path(snakemake.input.components).read_text().splitlines()) - 1  # a header, then one per component
dips = curve_dips(table, n_components)
notes = [
    "## Fit quality",
    "",
    fit_quality_markdown(fit_quality_rows(snakemake.input.fits)).rstrip(),
    "",
    f"## Where the curves dip ({n_components} components)",
    "",
    "Minimum-norm least squares (coar) interpolates the training masks once they number fewer than the "
    "components, and its LDS dips where the masks near the components count (double descent); "
    "estimators that choose a penalty or a stopping point on validation should not dip.",
    "",
    *(dips or ["- No estimator's mean LDS falls between consecutive train sizes."]),
    "",
]
fits = defaultdict(list)  # sampling-free method -> its fit on each model, in model order
for fit in map(load_fit, snakemake.input.baselines):
    fits[fit.attrs["estimator"]].append(fit)
priors = [name for name in snakemake.params.priors if name in fits]
notes += ["## Cheapest method per target", "", cheapest_markdown(rows, "coar").rstrip(), ""]
if priors:
    margin = np.mean([fit.intercept for fit in fits[priors[0]]], axis=0)  # unablated margins, averaged over models
    notes += [
        "## First-order priors",
        "",
        "Each prior alone (mean LDS per input over models), inputs in thirds by their unablated margin (averaged "
        "over models):",
        "",
        grouped_markdown({p: table.per_input(p)[0] for p in priors}, margin, "unablated margin").rstrip(),
        "",
    ]
    if "loo" in fits:
        exact = np.concatenate([fit.coef for fit in fits["loo"]])
        estimates = {p: np.concatenate([fit.coef for fit in fits[p]]) for p in priors}
        for p, coef in estimates.items():
            r = coefficient_agreement(coef, exact)
            notes.append(
                f"- {p} against leave-one-out (exact single ablations): per-input Pearson correlation of the "
                f"attributions, mean {r.mean():.3f}, median {np.median(r):.3f}, range [{r.min():.3f}, {r.max():.3f}] "
                f"over {len(r)} inputs."
            )
        modules = [line.split("\t")[2] for line in Path(snakemake.input.components).read_text().splitlines()[1:]]
        by_module = error_by_module(estimates, exact, modules)
        notes += [
            "",
            "Relative error of each prior against leave-one-out per module, ||prior - loo|| / ||loo|| over its "
            "components and every input (0: exact; 1: as far off as no effect at all):",
            "",
            markdown_table(by_module, list(by_module[0])).rstrip(),
            "",
        ]
gradient_prior = snakemake.params.gradient_prior  # the prior gradient_prior starts from
if gradient_prior in fits and {"gradient_prior", "ridge"} <= set(table.estimators):
    margin = np.mean([fit.intercept for fit in fits[gradient_prior]], axis=0)
    prior_cost = fits[gradient_prior][0].attrs["passes"]
    for covariate, label in (
        (table.per_input(gradient_prior)[0], "prior's own LDS"),
        (margin, "unablated margin"),
    ):
        notes += [
            "",
            f"Where the gradient prior ({gradient_prior}) helps: mean per-input LDS of gradient_prior minus ridge at "
            f"each number of masks, inputs in thirds by the {label} (both averaged over models and mask draws).",
            "",
            grouped_gain_markdown(table, "gradient_prior", "ridge", covariate, label, offset=prior_cost).rstrip(),
        ]
if snakemake.input.get("top_k"):  # the editing stage's tables, when the study edits
    tables = {
        name: [row for path in snakemake.input[name] for row in read_rows(path, columns)]
        for name, columns in (("top_k", TOP_K_COLUMNS), ("fix", FIX_COLUMNS), ("forget", FORGET_COLUMNS))
    }
    mean_lds = {  # by method and passes, as the LDS table keeps them
        (method, int(n)): score
        for method in table.estimators
        for n, score in zip(table.sizes[method], table.mean_curve(method), strict=True)
    }
    ks = snakemake.params.editing_ks
    k = max([kk for kk in ks if kk <= snakemake.params.editing_k] or [min(ks)])  # the grid's nearest from below
    notes += ["", summary_section(tables["top_k"], tables["forget"], tables["fix"], mean_lds, k).rstrip(), ""]
sizes = sorted(snakemake.params.train_sizes)
with open(snakemake.output.markdown, "w") as fh:
    sources = f"the {resampled_sources(table)}"
    passes = "trained models" if snakemake.params.kind == "data" else "forward-equivalent passes"
    fh.write(
        summary_markdown(
            rows, snakemake.params.study, sizes[0], sizes[-1], notes, references, headings, sources, passes
        )
    )
log.info("wrote %s", snakemake.output.markdown)
