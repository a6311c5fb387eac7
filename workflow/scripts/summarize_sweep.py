"""Collect a settings sweep: held-out LDS per setting, the setting chosen on validation per train size."""

import matplotlib

matplotlib.use("Agg")  # figures go to files; no display

import csv  # noqa: E402

import numpy as np  # noqa: E402

from compattr.analysis import concat_csv, read_lds_csv, select_by_validation  # noqa: E402
from compattr.io import start_log  # noqa: E402
from compattr.plots import plot_sweep  # noqa: E402
from compattr.repair import rebuild_on_damage
from compattr.reports import markdown_table  # noqa: E402
from compattr.stores import fit_stores, load_fit  # noqa: E402

log = start_log(snakemake.log[0])
rebuild_on_damage(snakemake.input)  # a damaged store this job reads is rebuilt by the next run
concat_csv(snakemake.input.lds, snakemake.output.lds)
table = read_lds_csv(snakemake.output.lds)
settings = snakemake.params.settings
settings_order = list(settings)
mse, spearman = {}, {}
for path in (store for entry in snakemake.input.fits for store in fit_stores(entry)):
    fit = load_fit(path)
    key = (fit.attrs["estimator"], int(fit.attrs["n_train"]))
    mse[key] = float(fit.diagnostics["validation_mse"].mean())
    spearman[key] = float(fit.diagnostics["validation_spearman"].mean())
# Shipped: the rank criterion, which matches the score the study reports (LDS, a Spearman correlation).
selection = select_by_validation(spearman, maximize=True)
by_mse = select_by_validation(mse)

rows = []
for (setting, n), value in sorted(mse.items(), key=lambda item: (item[0][1], item[0][0])):
    lds = table.mean_curve(setting)[list(table.sizes[setting]).index(n)]
    rows.append(
        {
            "n_train": n,
            "setting": setting,
            "validation_mse": value,
            "validation_spearman": spearman[(setting, n)],
            "heldout_lds": float(lds),
            "selected": selection[n] == setting,
            "selected_by_mse": by_mse[n] == setting,
        }
    )
with open(snakemake.output.selection, "w", newline="") as fh:
    writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)

best = []
for n, setting in selection.items():
    at_n = [r for r in rows if r["n_train"] == n]
    oracle = max(at_n, key=lambda r: r["heldout_lds"])
    default = next((r for r in at_n if r["setting"] == "default"), None)
    best.append(
        {
            "n_train": n,
            "selected": setting,
            "selected_lds": next(r["heldout_lds"] for r in at_n if r["setting"] == setting),
            "selected_by_mse": by_mse[n],
            "selected_by_mse_lds": next(r["heldout_lds"] for r in at_n if r["setting"] == by_mse[n]),
            "default_lds": default["heldout_lds"] if default else float("nan"),
            "best_heldout_setting": oracle["setting"],
            "best_heldout_lds": oracle["heldout_lds"],
        }
    )
counts = {s: list(selection.values()).count(s) for s in dict.fromkeys(selection.values())}
total = {s: sum(v for (setting, _), v in spearman.items() if setting == s) for s in settings_order}
overall = max(total, key=total.get)
with open(snakemake.output.markdown, "w") as fh:
    fh.write(f"# {snakemake.params.study}: settings sweep of {snakemake.params.estimator}\n\n")
    fh.write("| setting | overrides |\n|---|---|\n")
    fh.writelines(f"| {name} | {settings[name] or 'none'} |\n" for name in settings)
    fh.write(
        "\nPer train size, the setting with the highest mean validation Spearman correlation (selected: the "
        "criterion that matches the LDS the study reports) and its mean held-out LDS; the setting the lowest "
        "mean validation MSE would select, and its held-out LDS; `best_heldout_*` shows, for reference only, "
        "which setting scored best on the held-out masks (never used to choose).\n\n"
    )
    fh.write(markdown_table(best, list(best[0])))
    fh.write("\nTimes each setting was selected: " + ", ".join(f"{s} {c}" for s, c in counts.items()) + ".\n")
    fh.write(
        f"\nOverall, summed over train sizes, the highest validation Spearman is that of **{overall}** "
        f"({total[overall]:.3f}; default {total.get('default', float('nan')):.3f}).\n"
    )
reference = read_lds_csv(snakemake.input.reference)
fig = plot_sweep(
    table,
    selection,
    reference=reference,
    title=f"{snakemake.params.study}: {snakemake.params.estimator} settings sweep",
)
fig.savefig(snakemake.output.png, dpi=150)
log.info("selected per train size: %s", selection)
log.info("mean held-out LDS of the selected settings: %s", np.round([b["selected_lds"] for b in best], 3))
