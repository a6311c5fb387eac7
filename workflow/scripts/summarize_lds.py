"""Collect the per-method LDS tables; tabulate passes needed per LDS target, with reductions; compare the priors."""

from pathlib import Path

from compattr.analysis import (
    ceiling_targets,
    concat_csv,
    read_lds_csv,
    read_ood_csv,
    read_table,
    resampled_sources,
    summary_rows,
    write_summary_csv,
)
from compattr.editing import FIX_COLUMNS, FORGET_COLUMNS, TOP_K_COLUMNS
from compattr.io import start_log
from compattr.repair import rebuild_on_damage
from compattr.reports import mean_lds_markdown, study_notes, summary_markdown
from compattr.stores import load_fit

log = start_log(snakemake.log[0])
rebuild_on_damage(snakemake.input)  # a damaged store this job reads is rebuilt by the next run
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
write_summary_csv(snakemake.output.summary, rows)

# a header, then one row per component: index, name, module, unit, kind
modules = [line.split("\t")[2] for line in Path(snakemake.input.components).read_text().splitlines()[1:]]
editing = None
if snakemake.input.get("top_k"):  # the editing stage's tables, when the study edits
    editing = {
        name: [row for path in snakemake.input[name] for row in read_table(path, columns)]
        for name, columns in (("top_k", TOP_K_COLUMNS), ("fix", FIX_COLUMNS), ("forget", FORGET_COLUMNS))
    }
cost = "trained models" if snakemake.params.kind == "data" else "passes"
means = mean_lds_markdown(
    read_lds_csv(snakemake.output.lds, by="evaluations"),
    table,
    read_ood_csv(snakemake.output.ood) if snakemake.input.ood else {},
    cost=cost,
)
notes = ["## Mean LDS", "", means.rstrip(), ""] + study_notes(
    table,
    rows,
    fit_tables=snakemake.input.fits,
    modules=modules,
    baselines=[load_fit(path) for path in snakemake.input.baselines],
    priors=snakemake.params.priors,
    gradient_prior=snakemake.params.gradient_prior,  # the prior gradient_prior starts from
    editing=editing,
    editing_k=snakemake.params.editing_k,
    editing_ks=snakemake.params.editing_ks,
    targets=cfg["lds_targets"],
)
sizes = sorted(snakemake.params.train_sizes)
with open(snakemake.output.markdown, "w") as fh:
    sources = f"the {resampled_sources(table)}"
    passes = cost if snakemake.params.kind == "data" else "forward-equivalent passes"
    fh.write(
        summary_markdown(
            rows, snakemake.params.study, sizes[0], sizes[-1], notes, references, headings, sources, passes, cfg["ci"]
        )
    )
log.info("wrote %s", snakemake.output.markdown)
