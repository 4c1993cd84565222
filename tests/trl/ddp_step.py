"""One SGD step of UALSFTTrainer, run by tests under torchrun (2 CPU processes, gloo) or alone.

usage: ddp_step.py MODEL_DIR OUT_FILE PER_DEVICE_BATCH GRAD_ACCUM [liger]
Writes the parameter update (rank 0) as a torch file. With ``liger``: ``use_liger_kernel=True`` (run it with
``TRITON_INTERPRET=1`` on a CPU), printing the class of each module Liger replaced.
"""

import os
import sys

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

from ual_plugin.trl import UALSFTConfig, UALSFTTrainer


def main() -> None:
    model_dir, out_file, bs, ga = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    liger = {}
    if sys.argv[5:] == ["liger"]:
        # loss_type='nll': trl 1.9 refuses its chunked_nll with Liger; rms_norm off: Liger's RMSNorm kernel does
        # not run under Triton's CPU interpreter (its SwiGLU and RoPE kernels do)
        liger = dict(use_liger_kernel=True, loss_type="nll", liger_kernel_config={"rms_norm": False})
    rows = [{"prompt": f"Sample {i}: what is {i} plus {i}? " + "more " * (i % 5), "completion": f" It is {2 * i}.",
             "uncertainty": float(1 + 7 * i)} for i in range(16)]
    # fp32: the tests compare this update with another layout's (2 processes, Liger's kernels) to 1e-5 / 1e-4
    args = UALSFTConfig(
        output_dir=out_file + ".out", use_cpu=True, report_to=[], save_strategy="no", max_steps=1, seed=0,
        per_device_train_batch_size=bs, gradient_accumulation_steps=ga, optim="sgd", learning_rate=1.0,
        lr_scheduler_type="constant", max_grad_norm=0.0, weight_decay=0.0, bf16=False, disable_tqdm=True,
        train_sampling_strategy="sequential", shuffle_dataset=False, dataset_num_proc=None, ual_alpha=0.3,
        max_length=64, ddp_backend="gloo" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None, **liger,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    trainer = UALSFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                            processing_class=AutoTokenizer.from_pretrained(model_dir))
    before = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    trainer.train()
    if liger:  # Trainer applies Liger's kernels when train() starts
        print("replaced:", sorted({m._get_name() for m in trainer.model.modules() if "Liger" in m._get_name()}))
    if trainer.accelerator.is_main_process:
        delta = torch.cat([(p.detach() - before[k]).flatten() for k, p in trainer.model.named_parameters()])
        torch.save(delta, out_file)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
    # Leave without interpreter teardown: objects still holding gloo's threads were seen to abort a finished
    # rank there ("terminate called without an active exception"), about once in a few runs.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
