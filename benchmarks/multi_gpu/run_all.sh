#!/usr/bin/env bash
# The multi-GPU suite in one call (docs/multi_gpu.md): correctness matrix, hardware + model profiles, speed
# of the searched plan vs uniform layouts and accelerate FSDP2, cost model predicted vs measured.
#
#   bash benchmarks/multi_gpu/run_all.sh NUM_GPUS OUT_DIR                 # GPUs: NCCL, bf16, ~1.3B Llama
#   bash benchmarks/multi_gpu/run_all.sh NUM_GPUS OUT_DIR --cpu-dry-run   # CPU: gloo, fp32, tiny Llama
#   DRY_RUN=1 bash benchmarks/multi_gpu/run_all.sh 2 OUT_DIR              # the same
#
# Every phase runs under its own time box and the whole suite under SUITE_BUDGET_S; a phase that fails or
# times out is recorded in OUT_DIR/phases.tsv and the suite goes on. OUT_DIR/summary.md is written last.
# Knobs (environment): MODEL (1.3b | 2.7b | 7b | tiny), SEQ_LEN, GLOBAL_BATCH, STEPS, WARMUP, MEMORY_GB,
# SUITE_BUDGET_S, T_CORRECTNESS, T_HARDWARE, T_MODEL, T_PLANS, T_RUN, HW_EXTRA, MODEL_EXTRA, PROFILE_CACHE, PYTHON,
# BUNDLE (a folder that gets summary.md and multi_gpu_results.tar.gz of everything, for a remote runner that returns few files).

# The GPU machines require NVLink multicast off; keep these before anything starts a process group.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
set -uo pipefail  # no -e: a failing phase is recorded and the suite continues

usage() { echo "usage: bash benchmarks/multi_gpu/run_all.sh NUM_GPUS OUT_DIR [--cpu-dry-run]" >&2; exit 2; }
[[ $# -ge 2 ]] || usage
NUM_GPUS=$1
OUT_ARG=$2
DRY_RUN=${DRY_RUN:-0}
[[ ${3:-} == "--cpu-dry-run" ]] && DRY_RUN=1
[[ $NUM_GPUS =~ ^[0-9]+$ && $NUM_GPUS -ge 2 ]] || { echo "NUM_GPUS must be an integer >= 2" >&2; exit 2; }

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT" || exit 2
mkdir -p "$OUT_ARG/logs" "$OUT_ARG/speed/runs" || exit 2
OUT=$(cd "$OUT_ARG" && pwd)
HERE=benchmarks/multi_gpu
PYTHON=${PYTHON:-$(command -v python3 || command -v python)}  # the GPU image's torch is in 'python3'
# the package need not be installed (the GPU image has no galvatron_hf): import it from this checkout
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
LAUNCH=("$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$NUM_GPUS")
PHASES="$OUT/phases.tsv"
: > "$PHASES"
SUITE_START=$(date +%s)

if [[ $DRY_RUN == 1 ]]; then
  export OMP_NUM_THREADS=1
  CPU=(--cpu)
  MODEL=${MODEL:-tiny}; SEQ_LEN=${SEQ_LEN:-64}; GLOBAL_BATCH=${GLOBAL_BATCH:-$((4 * NUM_GPUS))}
  PRECISION=fp32; STEPS=${STEPS:-3}; WARMUP=${WARMUP:-1}
  SUITE_BUDGET_S=${SUITE_BUDGET_S:-1200}
  HW_ARGS=(--quick ${HW_EXTRA:-})
  MODEL_ARGS=(--device cpu --dtype fp32 --micro_batch_sizes 1 2 --warmup 1 --repeats 2 ${MODEL_EXTRA:-})
  TITLE="Multi-GPU suite: CPU DRY RUN ($NUM_GPUS gloo ranks, tiny model) - not GPU numbers"
else
  CPU=()
  MODEL=${MODEL:-1.3b}; SEQ_LEN=${SEQ_LEN:-2048}; GLOBAL_BATCH=${GLOBAL_BATCH:-$((8 * NUM_GPUS))}
  PRECISION=bf16; STEPS=${STEPS:-5}; WARMUP=${WARMUP:-2}
  SUITE_BUDGET_S=${SUITE_BUDGET_S:-570}  # the GPU call's limit is 600 s
  HW_ARGS=(${HW_EXTRA:-})
  MODEL_ARGS=(--dtype bf16 --micro_batch_sizes 1 2 4 ${MODEL_EXTRA:-})
  TITLE="Multi-GPU suite: $NUM_GPUS GPUs"
fi
T_CORRECTNESS=${T_CORRECTNESS:-150}; T_HARDWARE=${T_HARDWARE:-150}; T_MODEL=${T_MODEL:-120}
T_PLANS=${T_PLANS:-90}; T_RUN=${T_RUN:-100}
REPORT_RESERVE_S=15

# run_phase NAME TIME_BOX LOG CMD...: time-boxed by min(TIME_BOX, what is left of the suite budget)
run_phase() {
  local name=$1 box=$2 log=$3; shift 3
  local left=$((SUITE_BUDGET_S - ($(date +%s) - SUITE_START) - REPORT_RESERVE_S))
  (( box > left )) && box=$left
  if (( box < 10 )); then
    printf '%s\tskipped (suite budget spent)\t-\t0\t%s\n' "$name" "$log" >> "$PHASES"
    echo "== $name: skipped (suite budget spent)" >&2
    return 99
  fi
  echo "== $name (time box ${box}s) -> $log" >&2
  local begin rc status
  begin=$(date +%s.%N)
  timeout --signal=TERM --kill-after=15 "$box" "$@" > "$OUT/logs/$log" 2>&1
  rc=$?
  case $rc in
    0) status=ok ;;
    124|137) status="timed out after ${box}s" ;;
    *) status=failed ;;
  esac
  local seconds
  seconds=$(awk -v b="$begin" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - b }')
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$rc" "$seconds" "logs/$log" >> "$PHASES"
  echo "   $name: $status (${seconds}s)" >&2
  return $rc
}

# ----- 0. environment ---------------------------------------------------------------------------------------
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)  dry_run: $DRY_RUN  ranks: $NUM_GPUS"
  echo "model: $MODEL  seq_len: $SEQ_LEN  global_batch: $GLOBAL_BATCH  precision: $PRECISION"
  "$PYTHON" -c "import torch, transformers, accelerate; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'transformers', transformers.__version__, 'accelerate', accelerate.__version__, 'gpus', torch.cuda.device_count())"
  env | grep -E '^(NCCL_NVLS_ENABLE|TORCH_SYMM_MEM_DISABLE_MULTICAST|NVSHMEM_DISABLE_NVLS)=' | sort
  git -C "$ROOT" rev-parse HEAD 2>/dev/null | sed 's/^/commit: /'
  if [[ $DRY_RUN != 1 ]]; then
    nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader
    nvidia-smi topo -m
  fi
} > "$OUT/environment.txt" 2>&1

# ----- 1. correctness matrix ----------------------------------------------------------------------------------
run_phase correctness "$T_CORRECTNESS" correctness.log \
  "${LAUNCH[@]}" "$HERE/correctness.py" "${CPU[@]}" --out "$OUT/correctness.json"

# ----- 2. hardware and model profiles -------------------------------------------------------------------------
"$PYTHON" "$HERE/plans.py" --config_only --model "$MODEL" --seq_len "$SEQ_LEN" --num_gpus "$NUM_GPUS" \
  --global_batch "$GLOBAL_BATCH" --out "$OUT/speed"
run_phase profile_hardware "$T_HARDWARE" profile_hardware.log \
  "${LAUNCH[@]}" -m galvatron_hf.cli profile hardware --output "$OUT/hardware.json" "${HW_ARGS[@]}"
HARDWARE="$OUT/hardware.json"
if [[ ! -s $HARDWARE ]]; then  # fall back to the built-in figures of the device (recorded in plans.json)
  HARDWARE=h100
  nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | grep -qi h200 && HARDWARE=h200
  echo "   no measured hardware profile: planning with the built-in '$HARDWARE'" >&2
fi
run_phase profile_model "$T_MODEL" profile_model.log \
  "$PYTHON" -m galvatron_hf.cli profile model --model_name_or_path "$OUT/speed/config" --seq_len "$SEQ_LEN" \
  --attn_implementation sdpa --hardware "$HARDWARE" --output "$OUT/model_profile.json" \
  --cache_dir "${PROFILE_CACHE:-$(mktemp -d)}" "${MODEL_ARGS[@]}"
PROFILE_ARGS=()
[[ -s $OUT/model_profile.json ]] && PROFILE_ARGS=(--model_profile "$OUT/model_profile.json")

# ----- 3. plans, then one launch per run (an OOM or a hang costs one run, not the suite) -----------------------
MEMORY_ARGS=()
[[ -n ${MEMORY_GB:-} ]] && MEMORY_ARGS=(--memory_gb "$MEMORY_GB")
run_phase plans "$T_PLANS" plans.log \
  "$PYTHON" "$HERE/plans.py" --num_gpus "$NUM_GPUS" --model "$MODEL" --seq_len "$SEQ_LEN" \
  --global_batch "$GLOBAL_BATCH" --precision "$PRECISION" --hardware "$HARDWARE" "${PROFILE_ARGS[@]}" \
  "${MEMORY_ARGS[@]}" "${CPU[@]}" --out "$OUT/speed"

RUNS="$OUT/speed/runs"
measure_plan() {
  run_phase "run:$1" "$T_RUN" "run_$1.log" "${LAUNCH[@]}" "$HERE/measure.py" "${CPU[@]}" \
    --config "$OUT/speed/config" --plan "$OUT/speed/plans/$1.json" --steps "$STEPS" --warmup "$WARMUP" \
    --out "$RUNS/$1.json"
}
measure_fsdp2() {  # $1: run name, then extra flags
  local name=$1; shift
  run_phase "run:$name" "$T_RUN" "run_$name.log" "${LAUNCH[@]}" "$HERE/measure.py" "${CPU[@]}" --fsdp2 \
    --config "$OUT/speed/config" --global_batch "$GLOBAL_BATCH" --seq_len "$SEQ_LEN" --precision "$PRECISION" \
    --steps "$STEPS" --warmup "$WARMUP" --name "$name" --out "$RUNS/$name.json" "$@"
}
if [[ -s $OUT/speed/plans.json ]]; then
  # a plan identical to the searched one is not run twice (report.py reuses the measurement)
  mapfile -t PLAN_NAMES < <("$PYTHON" -c "import json, sys; print('\n'.join(p['name'] for p in \
json.load(open(sys.argv[1]))['plans'] if not p.get('same_layout_as')))" "$OUT/speed/plans.json")
  # the most important first: ours, then the baseline, then the uniform layouts
  [[ " ${PLAN_NAMES[*]} " == *" searched "* ]] && measure_plan searched
  measure_fsdp2 accelerate_fsdp2
  if compgen -G "$RUNS/accelerate_fsdp2.oom-rank*.json" > /dev/null; then
    measure_fsdp2 accelerate_fsdp2_ckpt --checkpoint  # the baseline's own way to fit: checkpoint every layer
  fi
  for name in "${PLAN_NAMES[@]}"; do
    [[ $name == searched ]] || measure_plan "$name"
  done
fi

# ----- 4. report (speed, cost model) and summary ----------------------------------------------------------------
printf '%s\t%s\t%s\t%s\t%s\n' "suite" "total" "-" "$(( $(date +%s) - SUITE_START ))" "-" >> "$PHASES"
"$PYTHON" "$HERE/report.py" --out "$OUT" --phases "$PHASES" --title "$TITLE" > "$OUT/logs/report.log" 2>&1 \
  || echo "report failed: see $OUT/logs/report.log" >&2
echo "summary: $OUT/summary.md" >&2

# A remote runner may return only a few files: BUNDLE=DIR gets summary.md and one archive.
if [[ -n ${BUNDLE:-} ]]; then
  mkdir -p "$BUNDLE"
  cp "$OUT/summary.md" "$BUNDLE/summary.md"
  tar -czf "$BUNDLE/multi_gpu_results.tar.gz" -C "$(dirname "$OUT")" "$(basename "$OUT")"
  echo "bundle: $BUNDLE/summary.md $BUNDLE/multi_gpu_results.tar.gz" >&2
fi
