"""raise.restarts: several selector trainings, the one of lowest training score kept; each restart is
the training its seed gives alone on the same features, the ledger charges all of them, an interrupted one resumes to the
same selector, and a resume with another restart setting is refused."""

from __future__ import annotations

from dataclasses import replace

import pytest
from safetensors.torch import load_file

from helpers import SYNTHETIC_OVERRIDES
from raise_select.callbacks import Callback
from raise_select.config_io import load_config
from raise_select.errors import UserError
from raise_select.experiments import restart_score, selector_training_cost, train_raise_selector
from raise_select.io_utils import read_json
from raise_select.pipeline import Workbench
from raise_select.report import write_report
from raise_select.run_folders import SELECTOR_TRAINING, folder_kind
from raise_select.selector_artifact import load_artifact

TRAIN_OVERRIDES = [*SYNTHETIC_OVERRIDES, "raise.episodes=4", "raise.episodes_per_update=2"]


@pytest.fixture(scope="module")
def bench():
    return Workbench.build(load_config(None, TRAIN_OVERRIDES), progress=False)


def _train(bench, output, *overrides, resume=False, callbacks=()):
    config = load_config(None, [*TRAIN_OVERRIDES, *overrides])
    return train_raise_selector(config, output, resume=resume, progress=False, callbacks=callbacks, bench=bench)


def _weights(selector_dir):
    return load_file(str(selector_dir / "weights.safetensors"))


def _same_weights(a, b) -> bool:
    wa, wb = _weights(a), _weights(b)
    return wa.keys() == wb.keys() and all(bool((wa[k] == wb[k]).all()) for k in wa)


@pytest.fixture(scope="module")
def restarts(bench, tmp_path_factory):
    output = tmp_path_factory.mktemp("restarts") / "train"
    return output, _train(bench, output, "raise.restarts=2", "seed=3")


def test_the_lowest_scoring_restart_is_kept_and_each_is_its_seeds_training(bench, restarts, tmp_path):
    output, selector_dir = restarts
    record = read_json(output / "restarts.json")
    assert record["seeds"] == [3, 1003]
    scores = [restart_score(output / "restarts" / f"seed-{seed}") for seed in record["seeds"]]
    assert record["scores"] == scores and scores[0] != scores[1]
    assert record["kept"] == record["seeds"][scores.index(min(scores))]
    assert load_artifact(selector_dir).provenance["restarts"]["kept"] == record["kept"]
    assert _same_weights(selector_dir, output / "restarts" / f"seed-{record['kept']}" / "selector")
    # the second restart is seed 1003's training on the features the restarts share (computed at seed 3,
    # its reference_loss column seeded by it), as a comparison's selector seeds share theirs
    shared = replace(bench, config=load_config(None, [*TRAIN_OVERRIDES, "seed=3"]))
    shared.ensure_features(progress=False)
    alone = _train(shared, tmp_path / "alone", "seed=1003")
    assert _same_weights(alone, output / "restarts" / "seed-1003" / "selector")
    assert folder_kind(output) == SELECTOR_TRAINING
    assert f"RAISE restarts: kept seed {record['kept']} of seed 3 " in write_report(output).read_text()


def test_the_ledger_charges_every_restart(restarts):
    output, selector_dir = restarts
    parts = [selector_training_cost(output / "restarts" / f"seed-{seed}") for seed in (3, 1003)]
    charged = read_json(output / "ledger.json")["phases"]["selector_training"]
    assert charged["tokens"] == sum(part.tokens for part in parts) > max(part.tokens for part in parts)
    assert load_artifact(selector_dir).provenance["training_cost"]["selector_training"]["tokens"] == charged["tokens"]


class _StopAt(Callback):
    def __init__(self, calls: int):
        self.calls, self.left = 0, calls

    def on_episode_end(self, episode, summary):
        self.left -= 1
        return self.left > 0


def test_an_interrupted_restart_training_resumes_to_the_same_selector(bench, restarts, tmp_path):
    output, selector_dir = restarts
    stopped = _train(bench, tmp_path / "train", "raise.restarts=2", "seed=3", callbacks=[_StopAt(6)])
    assert stopped == tmp_path / "train" / "restarts" / "seed-1003" / "selector"  # stopped in the second restart
    assert not (tmp_path / "train" / "selector").exists()
    resumed = _train(bench, tmp_path / "train", "raise.restarts=2", "seed=3", resume=True)
    assert _same_weights(resumed, selector_dir)
    assert read_json(tmp_path / "train" / "restarts.json") == read_json(output / "restarts.json")


def test_a_resume_with_another_restart_setting_is_refused(bench, restarts):
    output, _ = restarts
    with pytest.raises(UserError, match=r"was trained with raise.restarts > 1"):
        _train(bench, output, "seed=3", resume=True)
