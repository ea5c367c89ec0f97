#!/usr/bin/env bash
# The GPU checks and measurements of docs/performance.md, in one call on the device machine
# (its image has torch, triton, pytest and hypothesis; nothing is downloaded).
#   bash tools/gpu_checks.sh STEP...
#   STEP in: env tests tests_fast threshold scaling profile deit_small deit_small_b1
#            deit_small_fp32 deit_base vit_large eva_large compile all
# Logs go to $OUT (or ./gpu_out) as <step>.txt / .json.
set -u
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
pip install -q --no-deps --no-build-isolation --no-index -e . >/dev/null 2>&1 \
  || echo "(editable install failed; using PYTHONPATH)"
step() { local name=$1 limit=$2; shift 2; echo "== $name: $*"; local t0=$SECONDS
  timeout "$limit" "$@" > >(tee "$OUT/$name") 2>"$OUT/$name.err"; local rc=$?
  echo "== $name rc=$rc in $((SECONDS - t0)) s"; tail -n 5 "$OUT/$name.err" | grep -v USDT; }
for s in "$@"; do case $s in
  env) step env.txt 60 bash -c 'nvidia-smi -L; python3 -c "import torch, triton; print(torch.__version__, triton.__version__, torch.cuda.get_device_name())"' ;;
  tests) step tests_cuda.txt 300 python3 -m pytest -m cuda -q -p no:cacheprovider ;;
  threshold) step threshold.txt 120 python3 -m gtp_ref.bench threshold --device cuda --json-out "$OUT/threshold.json" ;;
  scaling) step scaling_cuda.txt 180 python3 -m gtp_ref.bench scaling --device cuda --json-out "$OUT/scaling_cuda.json" ;;
  profile) for m in gtp_fast tome; do
      step "profile_$m.txt" 120 python3 -m gtp_ref.bench profile --device cuda --model deit_small \
        --method "$m" --P 8 --batch 256 --dtype fp16 --rows 30; done ;;
  deit_small) step throughput_deit_small.txt 400 python3 -m gtp_ref.bench throughput --device cuda \
      --models deit_small --batches 256 --dtypes fp16 --json-out "$OUT/throughput_deit_small.json" --figure "$OUT/throughput_deit_small_fp16.png" ;;
  deit_small_b1) step throughput_deit_small_b1.txt 200 python3 -m gtp_ref.bench throughput --device cuda \
      --models deit_small --batches 1 --dtypes fp16 --json-out "$OUT/throughput_deit_small_b1.json" ;;
  deit_small_fp32) step throughput_deit_small_fp32.txt 250 python3 -m gtp_ref.bench throughput --device cuda \
      --models deit_small --batches 256 --dtypes fp32 --methods baseline_fused baseline_explicit gtp_sparse \
      gtp_fast tome baseline_fused+graph gtp_fast+graph tome+graph --json-out "$OUT/throughput_deit_small_fp32.json" ;;
  deit_base|vit_large|eva_large) step "throughput_$s.txt" 300 python3 -m gtp_ref.bench throughput --device cuda \
      --models "$s" --dtypes fp16 --methods baseline_fused baseline_explicit gtp_fast tome baseline_fused+graph \
      gtp_fast+graph tome+graph --json-out "$OUT/throughput_$s.json" ;;
  compile) step throughput_deit_small_compile.txt 580 python3 -m gtp_ref.bench throughput --device cuda \
      --models deit_small --batches 256 --dtypes fp16 --methods baseline_fused+graph gtp_fast+graph tome+graph \
      baseline_fused+compile gtp_fast+compile tome+compile --json-out "$OUT/throughput_deit_small_compile.json" ;;
  tests_fast) step tests_fast.txt 300 python3 -m pytest -m cuda -q -p no:cacheprovider tests/test_fast.py ;;
  all) step throughput_all.txt 580 python3 -m gtp_ref.bench throughput --device cuda \
      --json-out "$OUT/throughput_all.json" --figure "$OUT/throughput_h100.png" ;;
  *) echo "unknown step $s"; exit 2 ;;
esac; done
tar -czf "$OUT/logs.tgz" -C "$OUT" --exclude=logs.tgz . && echo "logs: $OUT/logs.tgz"
