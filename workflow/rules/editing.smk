# Editing with attributions (compattr.editing): top-k ablation per input for every method and train
# size, with k random components as reference; fixing misclassified images (their own stores and fits,
# below); forgetting a class at each method's largest size.
# One job per model and experiment: edits are cheap next to sampling, and the evaluator is built once.


rule edit_top_k:
    input:
        fits=editing_fits,
        model=rules.train_model.output.model,
        inputs=rules.select_test_inputs.output[0],
    output:
        f"{MODEL_DIR}/editing/top_k.csv",
    log:
        f"{MODEL_LOGS}/edit_top_k.log",
    conda:
        ENV
    threads: 1
    resources:
        gpu=GPU_JOBS,
    params:
        library=library("edit_top_k.py"),
        fits=lambda wc: {method: fits_of(wc.model, method) for method in METHODS},
        model=lambda wc: int(wc.model),
        ks=EDITING["ks"],
        random_draws=EDITING["random_draws"],
        seed=EDITING["seed"],
        batch_size=config["sampling"]["batch_size"],
        forward=FORWARD,
        device=config["device"],
    script:
        "../scripts/edit_top_k.py"


rule forget_class:
    input:
        fits=editing_fits,
        model=rules.train_model.output.model,
        inputs=rules.select_test_inputs.output[0],
    output:
        f"{MODEL_DIR}/editing/forget.csv",
    log:
        f"{MODEL_LOGS}/forget_class.log",
    conda:
        ENV
    threads: 1
    resources:
        gpu=GPU_JOBS,
    params:
        library=library("forget_class.py"),
        fits=lambda wc: {method: forgetting_fit(wc.model, method) for method in METHODS},
        model=lambda wc: int(wc.model),
        data=config["data"],
        ks=EDITING["ks"],
        n_images=EDITING["forget_images"],
        seed=EDITING["seed"],
        batch_size=config["sampling"]["batch_size"],
        forward=FORWARD,
        device=config["device"],
    script:
        "../scripts/forget_class.py"


rule select_mistakes:
    input:
        model=rules.train_model.output.model,
        inputs=rules.select_test_inputs.output[0],
    output:
        f"{MISTAKES_DIR}/inputs.npz",
    log:
        f"{MODEL_LOGS}/select_mistakes.log",
    conda:
        ENV
    threads: 1
    resources:
        gpu=GPU_JOBS,
    params:
        library=library("select_mistakes.py"),
        data=config["data"],
        mistakes=MISTAKES,
        batch_size=config["sampling"]["batch_size"],
        forward=FORWARD,
        device=config["device"],
    script:
        "../scripts/select_mistakes.py"


# The misclassified images' ablation store, priors, leave-one-out and fits: the rules of the attributed
# inputs, on these images, under m<k>/mistakes/ (one draw of the training masks, up to the largest size).
use rule init_ablation_store as init_mistakes_store with:
    input:
        model=rules.train_model.output.model,
        inputs=rules.select_mistakes.output[0],
    output:
        group=f"{MISTAKES_DIR}/ablations/{{split}}.zarr/zarr.json",
        masks=f"{MISTAKES_DIR}/ablations/{{split}}.zarr/masks/zarr.json",
        margins=f"{MISTAKES_DIR}/ablations/{{split}}.zarr/margins/zarr.json",
    log:
        f"{MODEL_LOGS}/mistakes/init_ablation_store/{{split}}.log",
    params:
        store=lambda wc: f"{mistakes_dir(wc.model)}/ablations/{wc.split}.zarr",
        n_masks=TRAIN_SIZES[-1],
        provenance=lambda wc: {**store_provenance(wc), "inputs": "mistakes", "mistakes": MISTAKES},


use rule sample_ablation_shard as sample_mistakes_shard with:
    input:
        model=rules.train_model.output.model,
        inputs=rules.select_mistakes.output[0],
        store=rules.init_mistakes_store.output.group,
    output:
        f"{MISTAKES_DIR}/ablations/{{split}}.shards/{{shard}}.json",
    benchmark:
        f"{MODEL_LOGS}/mistakes/benchmarks/sample_ablation_shard/{{split}}.{{shard}}.tsv"
    log:
        f"{MODEL_LOGS}/mistakes/sample_ablation_shard/{{split}}.{{shard}}.log",
    params:
        store=lambda wc: f"{mistakes_dir(wc.model)}/ablations/{wc.split}.zarr",


use rule check_ablation_store as check_mistakes_store with:
    input:
        shards=mistakes_shard_flags,
        store=rules.init_mistakes_store.output.group,
    output:
        f"{MISTAKES_DIR}/ablations/{{split}}.summary.json",
    log:
        f"{MODEL_LOGS}/mistakes/check_ablation_store/{{split}}.log",
    params:
        store=lambda wc: f"{mistakes_dir(wc.model)}/ablations/{wc.split}.zarr",


use rule fit_baseline as fit_mistakes_baseline with:
    input:
        model=rules.train_model.output.model,
        inputs=rules.select_mistakes.output[0],
    output:
        directory(f"{MISTAKES_DIR}/baselines/{{baseline}}.zarr"),
    benchmark:
        f"{MODEL_LOGS}/mistakes/benchmarks/fit_baseline/{{baseline}}.tsv"
    log:
        f"{MODEL_LOGS}/mistakes/fit_baseline/{{baseline}}.log",


use rule fit_estimator as fit_mistakes_estimator with:
    input:
        unpack(mistakes_prior_input),
        summary=f"{MISTAKES_DIR}/ablations/train.summary.json",
    output:
        directory(f"{MISTAKES_DIR}/fits/{{estimator}}"),
    benchmark:
        f"{MODEL_LOGS}/mistakes/benchmarks/fit_estimator/{{estimator}}.tsv"
    log:
        f"{MODEL_LOGS}/mistakes/fit_estimator/{{estimator}}.log",
    params:
        store=lambda wc: f"{mistakes_dir(wc.model)}/ablations/train.zarr",
        replicates=1,


use rule copy_shared_fit as copy_shared_mistakes_fit with:
    input:
        lambda wc: f"{mistakes_dir(wc.model)}/fits/{FITTED_WITH[wc.estimator]}",
        repairs=repair_logs(f"{MISTAKES_DIR}/fits/{{estimator}}"),
    output:
        directory(f"{MISTAKES_DIR}/fits/{{estimator}}"),
    log:
        f"{MODEL_LOGS}/mistakes/copy_shared_fit/{{estimator}}.log",


rule fix_mistakes:
    input:
        fits=mistakes_fits,
        random=f"{MODEL_DIR}/editing/fix_random.csv",
        model=rules.train_model.output.model,
        inputs=rules.select_test_inputs.output[0],
        mistakes=rules.select_mistakes.output[0],
    output:
        f"{MODEL_DIR}/editing/fix.csv",
    log:
        f"{MODEL_LOGS}/fix_mistakes.log",
    conda:
        ENV
    threads: 1
    resources:
        gpu=GPU_JOBS,
    params:
        library=library("fix_mistakes.py"),
        reference=False,
        fits=lambda wc: {method: fits_of(wc.model, method, mistakes_dir(wc.model)) for method in METHODS},
        model=lambda wc: int(wc.model),
        data=config["data"],
        ks=EDITING["ks"],
        n_images=MISTAKES["score_images"],
        seed=EDITING["seed"],
        batch_size=config["sampling"]["batch_size"],
        forward=FORWARD,
        device=config["device"],
    script:
        "../scripts/fix_mistakes.py"


# The fixing table's reference, k components drawn at random per mistake: it needs no fit, so it runs
# alongside the fits (its rows are appended to fix.csv).
use rule fix_mistakes as fix_random with:
    input:
        model=rules.train_model.output.model,
        inputs=rules.select_test_inputs.output[0],
        mistakes=rules.select_mistakes.output[0],
    output:
        f"{MODEL_DIR}/editing/fix_random.csv",
    log:
        f"{MODEL_LOGS}/fix_random.log",
    params:
        reference=True,
        fits={},
        random_draws=EDITING["random_draws"],


rule summarize_editing:
    input:
        top_k=expand(f"{RESULTS}/m{{model}}/editing/top_k.csv", model=MODELS),
        fix=expand(f"{RESULTS}/m{{model}}/editing/fix.csv", model=MODELS),
        forget=expand(f"{RESULTS}/m{{model}}/editing/forget.csv", model=MODELS),
    output:
        top_k=report(f"{RESULTS}/editing/top_k.csv", caption="../report/editing.rst", category="Editing"),
        fix=report(f"{RESULTS}/editing/fix.csv", caption="../report/editing.rst", category="Editing"),
        forget=report(f"{RESULTS}/editing/forget.csv", caption="../report/editing.rst", category="Editing"),
        top_k_png=report(f"{RESULTS}/editing/top_k.png", caption="../report/editing.rst", category="Editing"),
        fix_png=report(f"{RESULTS}/editing/fix.png", caption="../report/editing.rst", category="Editing"),
        forget_png=report(f"{RESULTS}/editing/forget.png", caption="../report/editing.rst", category="Editing"),
    log:
        f"{LOGS}/summarize_editing.log",
    conda:
        ENV
    params:
        library=library("summarize_editing.py"),
        seed=EDITING["seed"],
    script:
        "../scripts/summarize_editing.py"
