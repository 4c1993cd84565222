#!/usr/bin/env bash
# Set up .venv if needed (pinned: setup_env.sh main installs under scripts/constraints-main.txt), then run the
# bundled demo end to end (no API key, no hub access).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_DISABLED=true WANDB_MODE=disabled \
       TOKENIZERS_PARALLELISM=false AXOLOTL_DO_NOT_TRACK=1 HF_HUB_DISABLE_TELEMETRY=1 DO_NOT_TRACK=1
bash scripts/setup_env.sh main
.venv/bin/ual demo "$@"
