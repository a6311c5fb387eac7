# compattr: component attribution study, from model to figures.
# Run: snakemake --cores all [--configfile config/<file>.yaml]
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"


wildcard_constraints:
    split="|".join(SPLITS),
    estimator="|".join(ESTIMATORS),
    n=r"\d+",
    shard=r"\d+",


include: "workflow/rules/model.smk"
include: "workflow/rules/sampling.smk"
include: "workflow/rules/fit.smk"
include: "workflow/rules/score.smk"


rule all:
    default_target: True
    input:
        final_targets(),
