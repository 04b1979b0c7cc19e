#!/usr/bin/env bash
# Profile one GPU for the planner: a ~1B Llama model profile (seq 2048, bf16, SDPA) and a single-GPU
# hardware profile, written as JSON (plus logs and the truth report) into OUT_DIR.
#
#   bash benchmarks/gpu_profile.sh OUT_DIR
#
# The hub is unreachable: the model is a local config (Llama-3.2-1B's shape: hidden 2048, 16 layers,
# 32 heads / 8 KV heads, FFN 8192, vocab 128256, tied embeddings), written below. Random weights; only
# shapes matter for time and memory.
# Knobs (environment): SEQ_LEN (2048), DTYPE (bf16), ATTN (sdpa), MICRO_BATCHES ("1 2 4"),
# CONFIG_DIR (a directory with config.json to profile instead), HW_EXTRA (extra args for `profile hardware`,
# e.g. --quick), MODEL_EXTRA (extra args for `profile model`, e.g. "--device cpu").
# Commit the results under benchmarks/profiles/<device>/ (see benchmarks/profiles/README.md).
set -euo pipefail

OUT_DIR=${1:?usage: bash benchmarks/gpu_profile.sh OUT_DIR}
SEQ_LEN=${SEQ_LEN:-2048}
DTYPE=${DTYPE:-bf16}
ATTN=${ATTN:-sdpa}
MICRO_BATCHES=${MICRO_BATCHES:-"1 2 4"}
mkdir -p "$OUT_DIR"

if [[ -z "${CONFIG_DIR:-}" ]]; then
  CONFIG_DIR="$OUT_DIR/llama-1b-config"
  mkdir -p "$CONFIG_DIR"
  cat > "$CONFIG_DIR/config.json" <<'JSON'
{
  "model_type": "llama",
  "architectures": ["LlamaForCausalLM"],
  "hidden_size": 2048,
  "intermediate_size": 8192,
  "num_hidden_layers": 16,
  "num_attention_heads": 32,
  "num_key_value_heads": 8,
  "head_dim": 64,
  "vocab_size": 128256,
  "max_position_embeddings": 131072,
  "rms_norm_eps": 1e-05,
  "rope_theta": 500000.0,
  "hidden_act": "silu",
  "tie_word_embeddings": true,
  "attention_bias": false,
  "mlp_bias": false,
  "bos_token_id": 128000,
  "eos_token_id": 128001
}
JSON
fi

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  python -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
} | tee "$OUT_DIR/environment.txt"

echo "== hardware profile (one process: device only) ==" >&2
# shellcheck disable=SC2086
galvatron-hf profile hardware --output "$OUT_DIR/hardware-1gpu.json" ${HW_EXTRA:-} 2> >(tee "$OUT_DIR/hardware.log" >&2)

echo "== model profile: $CONFIG_DIR seq $SEQ_LEN $DTYPE $ATTN ==" >&2
# shellcheck disable=SC2086
galvatron-hf profile model --model_name_or_path "$CONFIG_DIR" --seq_len "$SEQ_LEN" \
  --micro_batch_sizes $MICRO_BATCHES --dtype "$DTYPE" --attn_implementation "$ATTN" \
  --output "$OUT_DIR/llama-1b-seq${SEQ_LEN}-${DTYPE}-${ATTN}.json" --cache_dir "$OUT_DIR/cache" \
  --hardware "$OUT_DIR/hardware-1gpu.json" ${MODEL_EXTRA:-} \
  > "$OUT_DIR/truth-report.txt" 2> >(tee "$OUT_DIR/model.log" >&2)
cat "$OUT_DIR/truth-report.txt"

# The planner's view on one GPU: measured layer costs, then the analytic default, same hardware file.
MODEL_JSON="$OUT_DIR/llama-1b-seq${SEQ_LEN}-${DTYPE}-${ATTN}.json"
for costs in profiled analytic; do
  extra=()
  [[ $costs == profiled ]] && extra=(--profile "$MODEL_JSON")
  galvatron-hf search --model_name_or_path "$CONFIG_DIR" --seq_len "$SEQ_LEN" --num_gpus 1 \
    --hardware "$OUT_DIR/hardware-1gpu.json" --mixed_precision "$DTYPE" --attn_implementation "$ATTN" "${extra[@]}" \
    --output "$OUT_DIR/plan-1gpu-$costs.json" > "$OUT_DIR/search-$costs.txt" 2>&1 \
    || echo "search ($costs) failed: see search-$costs.txt" >&2
done
echo "wrote $(ls "$OUT_DIR" | tr '\n' ' ')" >&2
