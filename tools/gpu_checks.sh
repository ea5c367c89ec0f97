#!/usr/bin/env bash
# Every GPU check and measurement of docs/performance.md in one call:
#   bash tools/gpu_checks.sh                                  # on a CUDA machine (OUT=dir, default gpu_out)
#   GPU_CHECKS_DRY_RUN=1 OUT=$(mktemp -d) bash tools/gpu_checks.sh   # on a CPU: the same steps, smoke sizes
#
# Steps, in order, each under its own time limit (seconds, with room for Triton's compiles); a step
# whose limit would pass the BUDGET (default 360 s; 1800 s in the dry run, which runs them all) is skipped:
#   env        torch / Triton / GPU, and what the image lacks (pytest, hypothesis)
#   tests      the CUDA and Triton tests, a small fixed set of hypothesis examples (profile "gpu")
#   attention  one block's attention: fused (no GTP), explicit GTP, the CUDA path (bench attention)
#   deit_small_fp16 / _bf16   DeiT-S at batch 256 and batch 1, CUDA-graph replays (+graph), P = 8 11 14 16
#   deit_small_fp32 / _384 / deit_base_fp16 / vit_large_fp16    the other rows of docs/performance.md
#   compile    torch.compile (replayed from a CUDA graph), while time remains
# Each step prints "== NAME: COMMAND" when it starts and "== NAME: rc=N in S s" (or "== NAME: skipped
# (why)") when it ends, into $OUT/summary.txt as it goes, with every table as it is measured.  At the
# end $OUT holds summary.txt, results.tgz (each step's output, error log and JSON) and the DeiT-S
# fp16 figure: 3 files (a GPU run returns at most 8).  Exit status: the number of failed steps.
#
# The dry run (GPU_CHECKS_DRY_RUN=1) runs every step's real command on the CPU at smoke sizes, the
# Triton kernels in Triton's interpreter (TRITON_INTERPRET=1), +graph methods as eager ones: what a
# test runs in CI, so that a GPU run cannot fail on the script itself.  A throughput step whose
# smoke command an earlier step ran has its real arguments checked instead (``--check``).
set -u
OUT=${OUT:-gpu_out}
DRY=${GPU_CHECKS_DRY_RUN:-0}
BUDGET=${BUDGET:-$([ "$DRY" = 1 ] && echo 1800 || echo 360)}  # the dry run runs every step
mkdir -p "$OUT/steps"
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
SUMMARY=$OUT/summary.txt
: >"$SUMMARY"
START=$SECONDS
FAILED=0
PY=${PYTHON:-python3}

if [ "$DRY" = 1 ]; then
  export TRITON_INTERPRET=1
  DEVICE=cpu
  SMOKE=1                                  # every measurement at smoke sizes, one round
else
  DEVICE=cuda
  SMOKE=0
fi
echo "gpu_checks: $([ "$DRY" = 1 ] && echo "dry run on the CPU" || echo "CUDA"), budget ${BUDGET} s, $(date -u +%Y-%m-%dT%H:%M:%SZ)" | tee -a "$SUMMARY"

step() {  # step NAME LIMIT_S COMMAND...: run it (a real executable, under timeout), stream its output
  local name=$1 limit=$2; shift 2
  local used=$((SECONDS - START))
  if (( used + limit > BUDGET )); then
    echo "== $name: skipped (${limit} s would pass the ${BUDGET} s budget at ${used} s)" | tee -a "$SUMMARY"
    return
  fi
  echo "== $name: $*" | tee -a "$SUMMARY"
  local t0=$SECONDS
  # stdout to the step's file and the summary; of stderr, the rows measured so far ("| ...") too
  timeout --kill-after=10 "$limit" "$@" 2> >(tee "$OUT/steps/$name.err" | grep --line-buffered '^| ' >>"$SUMMARY") \
    | tee "$OUT/steps/$name.txt" >>"$SUMMARY"
  local rc=${PIPESTATUS[0]}
  sleep 0.2  # the stderr filter's last lines
  tail -n 5 "$OUT/steps/$name.err" | grep -v "warm-up\|round [0-9]\|building\|^wrote\|^compiling\|^| " >>"$SUMMARY"
  echo "== $name: rc=$rc in $((SECONDS - t0)) s" | tee -a "$SUMMARY"
  (( rc == 0 )) || FAILED=$((FAILED + 1))
}

SMOKED=" "  # the dry run's smoke commands run so far
tp() {  # tp NAME LIMIT_S ARGS...: a throughput table with its JSON (smoke sizes in the dry run)
  local name=$1 limit=$2; shift 2
  local args=("$@")
  if (( SMOKE )); then  # the same methods on the smoke model, fp32, one round; the +graph methods eager
    args=(--models smoke --batches 2 --dtypes fp32 --num-prop 2 --repeats 1); local skipping=0
    for a in "$@"; do
      case $a in
        --models|--batches|--img-size|--num-prop|--dtypes) skipping=1 ;;  # and the values that follow
        --*) skipping=0; args+=("$a") ;;
        *) (( skipping )) || args+=("${a%+graph}") ;;
      esac
    done
    local key="${args[*]}"
    if [[ $SMOKED == *" $key |"* ]]; then  # this smoke run ran already: check the step's real arguments
      step "$name" "$limit" "$PY" -m gtp_ref.apps.bench throughput --check --device cuda \
        --json-out "$OUT/steps/$name.json" "$@"
      return
    fi
    SMOKED+=" $key |"
  fi
  step "$name" "$limit" "$PY" -m gtp_ref.apps.bench throughput --device "$DEVICE" --json-out "$OUT/steps/$name.json" "${args[@]}"
}

GRAPHED="baseline_fused+graph pruned_free gtp_fast+graph tome+graph"
P_ALL="8 11 14 16"

step env 30 "$PY" -c "
import importlib.util, platform, torch
print('python', platform.python_version(), '| torch', torch.__version__, '| CUDA', torch.version.cuda)
try:
    import triton; print('triton', triton.__version__)
except ImportError as e:
    print('triton: not installed', e)
missing = [m for m in ('pytest', 'hypothesis', 'numpy', 'sympy', 'matplotlib') if importlib.util.find_spec(m) is None]
print('missing:', ', '.join(missing) or 'nothing')
if torch.cuda.is_available():
    print('device', torch.cuda.get_device_name(), '| capability', torch.cuda.get_device_capability())
elif '$DEVICE' == 'cuda':
    raise SystemExit('no CUDA device')
raise SystemExit(1 if missing else 0)
"
if [ "$DRY" = 1 ]; then  # all but the authors' vector v05 (197 tokens through 10 blocks: 35 s in the
  # interpreter; test_triton_model_above_256_tokens_equals_dense runs the kernels on larger maps)
  step tests 600 "$PY" -m pytest -q -p no:cacheprovider -rs --hypothesis-profile gpu -m triton -k "not v05" tests/backends/test_fast.py
else
  step tests 150 "$PY" -m pytest -q -p no:cacheprovider -rs --hypothesis-profile gpu -m "cuda or triton" \
    tests/backends/test_fast.py tests/backbone/test_model.py tests/backends/test_sparse.py
fi
if (( SMOKE )); then
  step attention 60 "$PY" -m gtp_ref.apps.bench attention --device "$DEVICE" --sizes 2x23 --repeats 1 \
    --json-out "$OUT/steps/attention.json"
else
  step attention 45 "$PY" -m gtp_ref.apps.bench attention --device cuda --sizes 256x197 1x197 64x577 --dtypes fp16 bf16 fp32 \
    --json-out "$OUT/steps/attention.json"
fi
tp deit_small_fp16 45 --models deit_small --batches 256 1 --dtypes fp16 --num-prop $P_ALL --methods $GRAPHED \
   --figure "$OUT/throughput_deit_small_fp16.png"
tp deit_small_bf16 45 --models deit_small --batches 256 1 --dtypes bf16 --num-prop $P_ALL --methods $GRAPHED
tp deit_small_fp32 35 --models deit_small --batches 256 --dtypes fp32 --num-prop 8 16 --methods $GRAPHED
tp deit_small_384 35 --models deit_small --batches 64 --dtypes fp16 --img-size 384 --num-prop 8 16 --methods $GRAPHED
tp deit_base_fp16 35 --models deit_base --batches 256 --dtypes fp16 --num-prop 4 8 16 --methods $GRAPHED
tp vit_large_fp16 40 --models vit_large --batches 64 --dtypes fp16 --num-prop 2 4 8 --methods $GRAPHED
tp deit_small_compile 90 --models deit_small --batches 256 --dtypes fp16 --num-prop 8 16 \
   --methods baseline_fused+compile gtp_fast+compile tome+compile

echo "total $((SECONDS - START)) s, $FAILED step(s) failed" | tee -a "$SUMMARY"
tar -czf "$OUT/results.tgz" -C "$OUT" steps && rm -rf "$OUT/steps"
echo "wrote $(ls "$OUT" | tr '\n' ' ')" | tee -a "$SUMMARY"
exit "$FAILED"
