# The benchmarks run alone, one after the other: the throughput one after every job that the
# fit one needs (no sampling job shares the device with it), the others after it.
rule bench_throughput:
    input:
        unpack(bench_prior),
        model=f"{RESULTS}/m0/model/model.pt",
        inputs=rules.select_test_inputs.output[0],
        train=f"{RESULTS}/m0/ablations/train.summary.json",
        heldout=f"{RESULTS}/m0/ablations/heldout.summary.json",
    output:
        "results/bench/throughput.json",
    log:
        "logs/bench/throughput.log",
    conda:
        ENV
    threads: 2
    resources:
        gpu=GPU_JOBS,
    params:
        library=library("bench_throughput.py"),
        batch=config["sampling"]["batch_size"],
        forward=FORWARD,
        device=config["device"],
        study=STUDY,
    script:
        "../scripts/bench_throughput.py"


rule bench_fit:
    input:
        unpack(bench_prior),
        train=f"{RESULTS}/m0/ablations/train.summary.json",
        heldout=f"{RESULTS}/m0/ablations/heldout.summary.json",
        after=rules.bench_throughput.output[0],
    output:
        "results/bench/fit.json",
    log:
        "logs/bench/fit.log",
    conda:
        ENV
    threads: 2
    resources:
        gpu=GPU_JOBS,
    params:
        library=library("bench_fit.py"),
        train=store_path(0, "train"),
        heldout=store_path(0, "heldout"),
        n_train=max(TRAIN_SIZES),
        estimators={e: estimator_params(e) for e in BENCH_ESTIMATORS},
        reference_inputs=config["bench"]["reference_inputs"],
        device=config["device"],
    script:
        "../scripts/bench_fit.py"


# Training a data study's models in one batch against one by one (digits; config bench.training).
rule bench_training:
    input:
        after=rules.bench_fit.output[0],
    output:
        "results/bench/training.json",
    log:
        "logs/bench/training.log",
    conda:
        ENV
    threads: 2
    resources:
        gpu=GPU_JOBS,
    params:
        library=library("bench_training.py"),
        training=config["bench"]["training"],
        device=config["device"],
    script:
        "../scripts/bench_training.py"


# The study's 2-layer fits at every train size, with their settings and with the reference ones
# (config bench.two_layer), on model 0's first draw of masks.
rule bench_two_layer:
    input:
        unpack(bench_two_layer_prior),
        train=f"{RESULTS}/m0/ablations/train.summary.json",
        heldout=f"{RESULTS}/m0/ablations/heldout.summary.json",
        after=rules.bench_training.output[0],
    output:
        json="results/bench/two_layer.json",
        table="results/bench/two_layer.md",
    log:
        "logs/bench/two_layer.log",
    conda:
        ENV
    threads: 2
    resources:
        gpu=GPU_JOBS,
    params:
        library=library("bench_two_layer.py"),
        train=store_path(0, "train"),
        heldout=store_path(0, "heldout"),
        sizes=TRAIN_SIZES,
        estimators={e: estimator_params(e) for e in BENCH_TWO_LAYER},
        reference=config["bench"]["two_layer"]["reference"],
        device=config["device"],
    script:
        "../scripts/bench_two_layer.py"


# Linear fits at the seed's scale on planted problems (config bench.scale), each in its own process on
# bench.scale.threads threads. It needs no study: run it alone (`snakemake --cores 2 bench_scale`).
rule bench_scale:
    output:
        json="results/bench/scale.json",
        table="results/bench/scale.md",
    log:
        "logs/bench/scale.log",
    conda:
        ENV
    threads: config["bench"]["scale"]["threads"]
    params:
        library=library("bench_scale.py"),
        scale=config["bench"]["scale"],
    script:
        "../scripts/bench_scale.py"


rule bench:
    input:
        rules.bench_throughput.output,
        rules.bench_fit.output,
        rules.bench_training.output,
        rules.bench_two_layer.output.json,
        rules.bench_scale.output.json,
