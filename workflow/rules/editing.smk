# Editing with attributions (compattr.editing): top-k ablation per input for every method and train
# size, with k random components as reference; forgetting a class at each method's largest size.
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


rule summarize_editing:
    input:
        top_k=expand(f"{RESULTS}/m{{model}}/editing/top_k.csv", model=MODELS),
        forget=expand(f"{RESULTS}/m{{model}}/editing/forget.csv", model=MODELS),
        lds=rules.summarize_lds.output.lds,
    output:
        top_k=report(f"{RESULTS}/editing/top_k.csv", caption="../report/editing.rst", category="Editing"),
        forget=report(f"{RESULTS}/editing/forget.csv", caption="../report/editing.rst", category="Editing"),
        top_k_png=report(f"{RESULTS}/editing/top_k.png", caption="../report/editing.rst", category="Editing"),
        forget_png=report(f"{RESULTS}/editing/forget.png", caption="../report/editing.rst", category="Editing"),
        markdown=report(f"{RESULTS}/editing/summary.md", caption="../report/editing.rst", category="Editing"),
    log:
        f"{LOGS}/summarize_editing.log",
    conda:
        ENV
    params:
        library=library("summarize_editing.py"),
        study=STUDY,
        ks=EDITING["ks"],
        summary_k=10,
        seed=EDITING["seed"],
    script:
        "../scripts/summarize_editing.py"
