"""Verify every store of the study (mask stores and fits) without rebuilding anything intact.

Damaged outputs are logged for rebuilding (compattr.repair): the next plain run rebuilds exactly those.
"""

from compattr.io import start_log
from compattr.repair import verify_outputs

log = start_log(snakemake.log[0])
found = verify_outputs(snakemake.input.summaries, snakemake.input.fits)
for line in found:
    log.error(line)
if found:
    raise SystemExit(
        f"{len(found)} damaged store(s), marked for rebuilding: run the workflow again (see {snakemake.log[0]})"
    )
log.info("%d mask stores and %d fits verified: all intact", len(snakemake.input.summaries), len(snakemake.input.fits))
