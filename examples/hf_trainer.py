"""Fine-tune with transformers.Trainer while a RAISE selector (or a baseline) picks every step's batch.

    python examples/hf_trainer.py                    # nothing trained needed: the testbed, random selection
    python examples/hf_trainer.py --selector longest --output runs/hf --max-steps 24
    python examples/hf_trainer.py --policy runs/demo-quick/selector-s0/selector  # after raise-select demo --quick
    python examples/hf_trainer.py --config examples/configs/smollm2_gsm8k_mixed.yaml --policy smollm2-gsm8k
    torchrun --nproc_per_node 2 --master_addr 127.0.0.1 --master_port 29500 examples/hf_trainer.py --selector random

Defaults to the synthetic testbed and the random baseline (tiny model, under a minute on a CPU);
`--policy` takes a selector folder or the name of one shipped in the package (`raise-select list`).
Under torchrun every rank trains B / world_size examples of each step and rank 0 writes OUTPUT/selections.jsonl and metrics.jsonl.
"""

from transformers import TrainingArguments

from raise_select.integrations import RaiseTrainer
from raise_select.integrations.scripts import run_script


def train(args, bench, session):
    training = TrainingArguments(
        output_dir=args.output,
        report_to=args.report_to,
        logging_steps=1,
        save_strategy="no",
        **session.training_arguments(gradient_accumulation_steps=args.grad_accum),  # world size from torchrun
    )
    trainer = RaiseTrainer(model=bench.lm.model, args=training, selection=session, processing_class=bench.lm.tokenizer)
    trainer.train()
    return trainer


if __name__ == "__main__":
    run_script(__doc__.splitlines()[0], train)
