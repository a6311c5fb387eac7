# compattr: component attribution study, from model to figures.
# Run: snakemake --cores all [--configfile config/<file>.yaml]
import re

from snakemake.utils import min_version

min_version("9.0")


# The default study, unless the command line names its own config (a --configfile is then the whole
# config, not an overlay on the default one).
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"


wildcard_constraints:
    split=r"train|heldout|ood_[0-9.e-]+",
    estimator="|".join(METHODS),
    setting="|".join(map(re.escape, SWEEP["settings"])) or "none",
    model=r"\d+",
    shard=r"\d+",


include: "workflow/rules/model.smk"
include: "workflow/rules/sampling.smk"
include: "workflow/rules/fit.smk"
include: "workflow/rules/score.smk"
include: "workflow/rules/sweep.smk"
include: "workflow/rules/bench.smk"
include: "workflow/rules/editing.smk"
include: "workflow/rules/unified.smk"
include: "workflow/rules/verify.smk"


# Jobs that only create, collect or name files run in the main process (on a cluster: the head node).
localrules:
    all,
    sweep,
    bench,
    unified,
    init_ablation_store,
    init_mistakes_store,
    top_components,
    verify,


rule all:
    default_target: True
    input:
        final_targets(),
