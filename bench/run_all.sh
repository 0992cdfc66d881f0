#!/bin/sh
# Every benchmark, one after another, on the default device (CUDA when present), each table
# also written to $OUT (default bench-results/). About 5 minutes on the 2-core CPU, plus
# bench_predict (6 min measured on a heavily shared machine).
#     sh bench/run_all.sh            (or: make bench)
set -eu
out=${OUT:-bench-results}
py=${PY:-python}
mkdir -p "$out"
run() { name=$1; shift; echo "== $name: $*"; "$py" "$@" 2>&1 | tee "$out/$name.md"; }
run train_step bench/bench_train_step.py --compare
# On CUDA the line above compiles the loss (train.compile: auto); this one does not, so the
# two tables give every model's examples/s with and without torch.compile.
if "$py" -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
    run train_step_eager bench/bench_train_step.py --compile never
fi
run fit bench/bench_fit.py
run vgg bench/bench_vgg.py --compare
run predict bench/bench_predict.py
