#!/bin/sh
# Every benchmark, one after another, on the default device (CUDA when present), each table
# also written to $OUT (default bench-results/), and last the estimated hours of the whole
# paper run on this device from the rates just measured (bench/estimate_paper.py). About
# 15 minutes on the 2-core CPU.
#     sh bench/run_all.sh            (or: make bench)
set -eu
out=${OUT:-bench-results}
py=${PY:-python}
mkdir -p "$out"
run() { name=$1; shift; echo "== $name: $*"; "$py" "$@" 2>&1 | tee "$out/$name.md"; }
run train_step bench/bench_train_step.py --compare --json "$out/train_step.json"
# On CUDA the line above compiles the loss (train.compile: auto); this one does not, so the
# two tables give every model's examples/s with and without torch.compile.
if "$py" -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
    run train_step_eager bench/bench_train_step.py --compile never
fi
# SS-HMVAE: its final evaluation (iterative sampling) is the costliest of the models'
run fit bench/bench_fit.py --model ss_hmvae --test 256 --json "$out/fit.json"
run vgg bench/bench_vgg.py --compare --json "$out/vgg.json"
run predict bench/bench_predict.py
run estimate bench/estimate_paper.py "$out"
