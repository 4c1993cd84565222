#!/usr/bin/env bash
# The GPU checks and measurements of benchmarks/RESULTS.md. Run from the repository root with trl,
# datasets, peft, bitsandbytes and (for the axolotl stage) axolotl importable; each stage writes its
# own section of RESULTS.md.
#
#   bash benchmarks/run_gpu_suite.sh           # = all: verify, then loss and trl (one command, < 10 minutes)
#   bash benchmarks/run_gpu_suite.sh verify    # first: the GPU-only checks of the loss kernels (< 3 minutes)
#   bash benchmarks/run_gpu_suite.sh tests     # GPU tests: the Triton kernel against the references
#   bash benchmarks/run_gpu_suite.sh loss      # loss at 8192x4096x128256 and 16384x4096x32000
#   bash benchmarks/run_gpu_suite.sh trl       # LoRA training step, Llama-3-8B shape: UALSFTTrainer vs SFTTrainer
#   bash benchmarks/run_gpu_suite.sh qlora     # 4-bit QLoRA with UAL: runs, loss matches bf16 LoRA
#   bash benchmarks/run_gpu_suite.sh axolotl   # axolotl train: UAL vs default loss vs Liger FLCE
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_DISABLED=true \
       TOKENIZERS_PARALLELISM=false AXOLOTL_DO_NOT_TRACK=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
case "${1:-all}" in
  all)     # verify gates the rest: a failing check stops the suite before any timing is written
           timeout 240 bash "$0" verify && timeout 150 bash "$0" loss && timeout 180 bash "$0" trl ;;
  verify)  $PY benchmarks/verify_gpu.py --write ;;
  tests)   $PY -m pytest -q -p no:cacheprovider tests/test_loss.py tests/test_loss_triton.py tests/test_causal_lm.py ;;
  loss)    $PY benchmarks/loss_bench.py --preset gpu --reps 20 --write ;;
  trl)     $PY benchmarks/train_step_bench.py --preset llama3-8b-lora --reps 6 --write ;;
  qlora)   $PY benchmarks/qlora_check.py --preset llama3-8b --write ;;
  axolotl) $PY benchmarks/axolotl_step_bench.py --preset llama3-8b-lora --write ;;
  *) echo "usage: $0 [all|verify|tests|loss|trl|qlora|axolotl]" >&2; exit 2 ;;
esac
