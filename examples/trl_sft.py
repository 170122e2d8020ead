"""Fine-tune with TRL's SFTTrainer while a RAISE selector (or a baseline) picks every step's batch.

    pip install "raise-select[trl]"
    python examples/trl_sft.py                    # nothing trained needed: the testbed, random selection
    python examples/trl_sft.py --selector longest --output runs/sft --max-steps 24
    python examples/trl_sft.py --policy runs/demo-quick/selector-s0/selector  # after raise-select demo --quick
    python examples/trl_sft.py --config examples/configs/smollm2_gsm8k_mixed.yaml --policy smollm2-gsm8k
    torchrun --nproc_per_node 2 --master_addr 127.0.0.1 --master_port 29500 examples/trl_sft.py --selector random

Defaults to the synthetic testbed and the random baseline (tiny model, under a minute on a CPU);
`--policy` takes a selector folder or the name of one shipped in the package (`raise-select list`).
SFTTrainer receives the pool pre-tokenized (session.sft_dataset(): row i = pool example i, loss on the response only).
"""

from raise_select.integrations.scripts import run_script


def train(args, bench, session):
    from trl import SFTConfig

    from raise_select.integrations import RaiseSFTTrainer  # without TRL: "error: ... pip install raise-select[trl]"

    training = SFTConfig(
        output_dir=args.output,
        report_to=args.report_to,
        logging_steps=1,
        save_strategy="no",
        bf16=bench.config.model.precision == "bf16",
        activation_checkpointing=False,  # TRL defaults both to True
        **session.training_arguments(gradient_accumulation_steps=args.grad_accum),  # world size from torchrun
    )
    trainer = RaiseSFTTrainer(
        model=bench.lm.model, args=training, selection=session, processing_class=bench.lm.tokenizer
    )
    trainer.train()
    return trainer


if __name__ == "__main__":
    run_script(__doc__.splitlines()[0], train)
