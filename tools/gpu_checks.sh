#!/usr/bin/env bash
# Every GPU check and measurement of docs/performance.md, in one call on a CUDA machine, in under
# 8 minutes: the CUDA and fused-path tests, the attention micro-benchmark, and the throughput
# tables (DeiT-S fp16 / bf16 / fp32 at batch 256, DeiT-B fp16 at 256, ViT-L fp16 at 64, DeiT-S at
# 384 px, then torch.compile while time remains).
#   bash tools/gpu_checks.sh            # OUT=dir to choose where the results go (default gpu_out)
# Steps run in that order, each under its own time limit, and a step is skipped once the whole
# run would pass BUDGET seconds (default 450).  Writes to $OUT: summary.txt (every step's
# command, exit status and seconds, and the tables), results.tgz (each step's JSON and log).
# Needs torch with CUDA, triton, pytest and hypothesis (the device machine's image has them).
set -u
OUT=${OUT:-gpu_out}
BUDGET=${BUDGET:-450}
mkdir -p "$OUT/steps"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
SUMMARY=$OUT/summary.txt
: >"$SUMMARY"
START=$SECONDS

step() {  # step NAME LIMIT_S COMMAND...: run it, log to steps/NAME.txt, skip if past the budget
  local name=$1 limit=$2; shift 2
  if (( SECONDS - START + limit > BUDGET )); then
    echo "== $name: skipped (${limit} s would pass the ${BUDGET} s budget at $((SECONDS - START)) s)" | tee -a "$SUMMARY"
    return
  fi
  echo "== $name: $*" | tee -a "$SUMMARY"
  local t0=$SECONDS
  timeout "$limit" "$@" >"$OUT/steps/$name.txt" 2>"$OUT/steps/$name.err"
  local rc=$?
  echo "== $name: rc=$rc in $((SECONDS - t0)) s" | tee -a "$SUMMARY"
  grep -v "warm-up\|round [0-9]" "$OUT/steps/$name.txt" | tail -n 60 >>"$SUMMARY"
  tail -n 5 "$OUT/steps/$name.err" | grep -v "warm-up\|round [0-9]\|^wrote" >>"$SUMMARY"
}

bench() { python3 -m gtp_ref.bench "$@"; }
tp() {  # tp NAME LIMIT_S ARGS...: a throughput table with its JSON
  local name=$1 limit=$2; shift 2
  step "$name" "$limit" bench throughput --device cuda --json-out "$OUT/steps/$name.json" "$@"
}
EAGER_GRAPH="baseline_fused baseline_fused+graph pruned_free gtp_fast gtp_fast+graph tome tome+graph"

step env 30 bash -c 'nvidia-smi -L; python3 -c "import torch, triton; print(\"torch\", torch.__version__, \"triton\", triton.__version__, torch.cuda.get_device_name())"'
step tests 150 python3 -m pytest -q -p no:cacheprovider -rs -m "cuda or fused" tests
step attention 60 bench attention --device cuda --json-out "$OUT/steps/attention.json"
tp deit_small_fp16 80 --models deit_small --batches 256 --dtypes fp16 --methods $EAGER_GRAPH \
   --figure "$OUT/steps/throughput_deit_small_fp16.png"
tp deit_small_bf16 60 --models deit_small --batches 256 --dtypes bf16 --methods $EAGER_GRAPH
tp deit_small_fp32 60 --models deit_small --batches 256 --dtypes fp32 --methods $EAGER_GRAPH
tp deit_small_384 40 --models deit_small --batches 64 --dtypes fp16 --img-size 384 --num-prop 8 16 --methods $EAGER_GRAPH
tp deit_base_fp16 50 --models deit_base --batches 256 --dtypes fp16 --num-prop 4 8 16 --methods $EAGER_GRAPH
tp vit_large_fp16 50 --models vit_large --batches 64 --dtypes fp16 --num-prop 2 4 8 --methods $EAGER_GRAPH
tp deit_small_compile 120 --models deit_small --batches 256 --dtypes fp16 --num-prop 8 16 --methods baseline_fused+compile \
   gtp_fast+compile tome+compile

echo "total $((SECONDS - START)) s" | tee -a "$SUMMARY"
tar -czf "$OUT/results.tgz" -C "$OUT" steps && echo "wrote $OUT/summary.txt, $OUT/results.tgz"
