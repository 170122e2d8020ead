"""Run under ``torchrun --nproc_per_node 2`` by test_trainer_integration.py (not collected by pytest).

    torchrun ... tests/trainer_ddp_worker.py OUTPUT SELECTOR POLICY_OR_- OVERRIDE...

Trains with RaiseTrainer on the synthetic testbed and writes ``rank<r>.json``: the decisions this
rank made, the pool indices of every micro-batch it trained (by update), its validation history and
the validation examples it scored itself (its shard of each pass) and the loss it gets scoring the
whole set itself; ``output/weights-rank<r>.pt`` holds its final weights.
"""

import json
import sys
from pathlib import Path

import torch
from transformers import TrainingArguments

import raise_select.evaluation as evaluation
from raise_select.config_io import load_config
from raise_select.integrations import RaiseTrainer, SelectionSession
from raise_select.pipeline import Workbench
from raise_select.selectors import build_selector


def main() -> None:
    output, selector_name, policy, *overrides = sys.argv[1:]
    torch.set_num_threads(1)
    if policy != "-":
        overrides.append(f"raise.policy={policy}")
    config = load_config(None, overrides)
    bench = Workbench.build(config)
    session = SelectionSession.from_workbench(bench, build_selector(selector_name, config))
    trained: list[list[int]] = []
    scored: list[list[int]] = []  # the validation examples of each pass this rank scored
    score = evaluation.per_example_losses

    def recording_score(lm, tokens, indices=None, batch_size=16):
        scored.append([int(i) for i in indices] if indices is not None else list(range(len(tokens))))
        return score(lm, tokens, indices, batch_size)

    evaluation.per_example_losses = recording_score
    sharded_pass = session.tracker.evaluate
    unsharded: list[float] = []  # the same weights' validation loss scored whole in this process

    def evaluate_both_ways():
        tracker = session.tracker
        unsharded.append(float(score(tracker.lm, tracker.validation_tokens, None, config.train.eval_batch_size).mean()))
        return sharded_pass()

    session.tracker.evaluate = evaluate_both_ways

    def recording_collate(indices):
        trained.append([int(i) for i in indices])
        return session.collate(indices)

    args = TrainingArguments(
        output_dir=output,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        **session.training_arguments(world_size=2),
    )
    trainer = RaiseTrainer(model=bench.lm.model, args=args, selection=session, data_collator=recording_collate)
    trainer.train()
    rank = trainer.args.process_index
    decisions = [row["indices"] for row in session.selections]
    weights = {name: p.detach().clone() for name, p in bench.lm.model.named_parameters()}
    torch.save(weights, Path(output) / f"weights-rank{rank}.pt")
    (Path(output) / f"rank{rank}.json").write_text(
        json.dumps(
            {
                "world_size": trainer.args.world_size,
                "decisions": decisions,
                "trained": trained,
                "validation_history": session.state.validation_history,
                "validation_scored": scored,
                "validation_unsharded": unsharded,
            }
        )
    )


if __name__ == "__main__":
    main()
