"""List each test input's components with the largest attributed effects, by name."""

import csv

from compattr.fitting import top_components
from compattr.io import start_log
from compattr.repair import rebuild_on_damage
from compattr.stores import load_fit, read_coordinates

log = start_log(snakemake.log[0])
rebuild_on_damage(snakemake.input)  # a damaged store this job reads is rebuilt by the next run
p = snakemake.params
fit = load_fit(p.fit)
coords = read_coordinates(p.fit)
if coords is None:
    raise ValueError(f"{p.fit} has no coordinates (component names, input ids): refit it with this version")
labels = dict(zip(coords["inputs"].tolist(), coords["labels"].tolist(), strict=True))
top = top_components(fit.coef, coords["components"], coords["inputs"].tolist(), p.k)
with open(snakemake.output[0], "w", newline="") as fh:
    writer = csv.writer(fh)
    writer.writerow(["method", "n_train", "input", "label", "rank", "component", "effect"])
    for input_id, pairs in top.items():
        for rank, (name, effect) in enumerate(pairs, start=1):
            writer.writerow([p.method, fit.attrs["n_train"], input_id, labels[input_id], rank, name, f"{effect:.6g}"])
log.info("top %d components of %d inputs by %s (%s)", p.k, len(top), p.method, p.fit)
