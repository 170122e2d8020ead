"""Every bad input or fault is one line on stderr with exit status 2, and finished work survives it.

Each case builds its input, snapshots the whole workspace (a finished finetune run, a trained
selector, a finished comparison, input files), runs the CLI in-process, and asserts: status 2, exactly
one ``error: ...`` line containing the expected fragments, nothing on stdout, and every file in the
workspace byte-identical afterwards with nothing added (no partial folders, no temporary siblings).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

from helpers import SYNTHETIC_OVERRIDES, assert_one_line_error
from raise_select import io_utils, run_folders
from raise_select.cli import main, parse_args
from raise_select.config import SourceConfig
from raise_select.config_io import dump_config, load_config
from raise_select.data import synthetic
from raise_select.data.formats import load_source_file
from raise_select.errors import UserError
from raise_select.selector_artifact import load_artifact, save_artifact


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """A workspace with a config, a finished finetune run, a trained selector and a finished comparison."""
    root = tmp_path_factory.mktemp("errors")
    config = load_config(None, [*SYNTHETIC_OVERRIDES, "target.n_test=4", "train.budget_steps=2"])
    (root / "config.yaml").write_text(dump_config(config), encoding="utf-8")
    common = ["--config", str(root / "config.yaml"), "--no-progress"]
    assert main(["finetune", *common, "--output", str(root / "run")]) == 0
    assert (
        main(
            ["train-selector", *common, "--output", str(root / "training"), "raise.episodes=2", "raise.episode_steps=2"]
        )
        == 0
    )
    assert (
        main(
            [
                "compare",
                *common,
                "--output",
                str(root / "comparison"),
                "compare.methods=[random]",
                "compare.seeds=[0]",
                "compare.budget_steps=[2]",
                "compare.test_metric=false",
            ]
        )
        == 0
    )
    return root


def snapshot(folder) -> dict[str, bytes | None]:
    """Every file's bytes and every folder (None), hidden ones included, by relative path."""
    return {
        str(path.relative_to(folder)): path.read_bytes() if path.is_file() else None
        for path in sorted(folder.rglob("*"))
    }


def _run(ws, argv):
    return [argv[0], "--config", str(ws / "config.yaml"), "--no-progress", *argv[1:]]


def _new(command: str, *extra):
    """argv builder: ``command`` into a folder that does not exist yet."""
    return lambda ws: _run(ws, [command, "--output", str(ws / "new"), *[e(ws) if callable(e) else e for e in extra]])


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def _nan_selector(ws):
    folder = ws / "nan-selector"
    if not folder.exists():
        shutil.copytree(ws / "training" / "selector", folder)
        tensors = load_file(str(folder / "weights.safetensors"))
        first = sorted(k for k in tensors if k.startswith("policy."))[0]
        tensors[first] = torch.full_like(tensors[first], float("nan"))
        save_file(tensors, str(folder / "weights.safetensors"), metadata={"format": "raise-select-selector"})
    return folder


def _training_of(ws, episodes: int):
    """A copy of the workspace's selector training continued to ``episodes`` episodes."""
    folder = ws / f"training-{episodes}"
    if not folder.exists():
        shutil.copytree(ws / "training", folder)
        argv = ["train-selector", "--resume", "--output", str(folder), f"raise.episodes={episodes}"]
        assert main(_run(ws, [*argv, "raise.episode_steps=2"])) == 0
    return folder


def _with_user_files(ws, name: str):
    """A copy of one of the workspace's folders where a user put a note and a file among the plots."""
    folder = ws / f"{name}-with-notes"
    if not folder.exists():
        shutil.copytree(ws / name, folder)
        (folder / "notes.txt").write_text("my notes")
        (folder / "plots").mkdir(exist_ok=True)
        (folder / "plots" / "mine.csv").write_text("a,b\n")
    return folder


def _bad_utf8_pool(ws):
    lines = [json.dumps({"prompt": f"say {i}", "response": str(i)}).encode() for i in range(12)]
    lines[3] = b'{"prompt": "caf\xe9", "response": "x"}'
    return _write(ws / "latin1.jsonl", b"\n".join(lines) + b"\n")


# (name, argv builder, fragments of the error line). Builders may write input files; they run
# before the workspace snapshot. The classes first, then further bad inputs.
CASES = {
    # results destroyed or silently replaced
    "rerun with negative learning rate": (
        lambda ws: _run(ws, ["finetune", "--output", str(ws / "run"), "train.learning_rate=-1"]),
        ["train.learning_rate=-1.0", "must be > 0", "train.learning_rate=0.0002"],
    ),
    "rerun with zero eval batch": (
        lambda ws: _run(ws, ["finetune", "--output", str(ws / "run"), "train.eval_batch_size=0"]),
        ["train.eval_batch_size=0", "must be >= 1"],
    ),
    "train-selector over a trained selector": (
        lambda ws: _run(ws, ["train-selector", "--output", str(ws / "training")]),
        ["already holds a selector training", "--resume", "--overwrite"],
    ),
    "finetune into a selector training": (
        lambda ws: _run(ws, ["finetune", "--output", str(ws / "training")]),
        ["selector-training folder", "choose another --output"],
    ),
    "finetune into a comparison": (
        lambda ws: _run(ws, ["finetune", "--output", str(ws / "comparison")]),
        ["comparison folder", "choose another --output"],
    ),
    "finetune into a folder of other files": (
        lambda ws: _run(ws, ["finetune", "--output", str(ws)]),
        ["folder of other files", "choose another --output"],
    ),
    "resume with another budget": (
        lambda ws: _run(ws, ["train-selector", "--resume", "--output", str(ws / "training"), "raise.episode_steps=3"]),
        ["--resume", "raise.episode_steps"],
    ),
    "resume with another pool": (
        lambda ws: _run(
            ws,
            [
                "train-selector",
                "--resume",
                "--output",
                str(ws / "training"),
                "raise.episode_steps=2",
                "pool.sources=[{name: synthetic, limit: 200}]",
            ],
        ),
        ["--resume", "different pool.sources"],
    ),
    "resume with another target": (
        lambda ws: _run(
            ws,
            [
                "train-selector",
                "--resume",
                "--output",
                str(ws / "training"),
                "raise.episode_steps=2",
                "target.n_validation=20",
            ],
        ),
        ["different target.n_validation"],
    ),
    "resume with another learning rate": (
        lambda ws: _run(
            ws,
            [
                "train-selector",
                "--resume",
                "--output",
                str(ws / "training"),
                "raise.episode_steps=2",
                "train.learning_rate=0.01",
            ],
        ),
        ["different train.learning_rate"],
    ),
    "resume with another batch size": (
        lambda ws: _run(
            ws,
            [
                "train-selector",
                "--resume",
                "--output",
                str(ws / "training"),
                "raise.episode_steps=2",
                "train.batch_size=4",
            ],
        ),
        ["different train.batch_size"],
    ),
    "resume with fewer episodes than played": (
        lambda ws: _run(
            ws,
            [
                "train-selector",
                "--resume",
                "--output",
                str(_training_of(ws, 4)),
                "raise.episodes=2",
                "raise.episode_steps=2",
            ],
        ),
        ["--resume", "already played 4 episodes", "raise.episodes=2", "pass raise.episodes=4 or more"],
    ),
    "finetune re-run over a run folder holding a user's files": (
        lambda ws: _run(ws, ["finetune", "--output", str(_with_user_files(ws, "run"))]),
        ["holds files a finetune run folder does not write", "notes.txt", "plots/mine.csv", "move them out"],
    ),
    "overwrite of a selector training holding a user's files": (
        lambda ws: _run(ws, ["train-selector", "--overwrite", "--output", str(_with_user_files(ws, "training"))]),
        ["holds files a selector-training folder", "notes.txt", "plots/mine.csv", "move them out"],
    ),
    "resume and overwrite together": (
        lambda ws: _run(ws, ["train-selector", "--resume", "--overwrite", "--output", str(ws / "training")]),
        ["contradict"],
    ),
    # garbage that used to be accepted
    "selector with NaN weights": (
        _new("finetune", "--selector", "raise", "--policy", lambda ws: str(_nan_selector(ws))),
        ["non-finite", "policy."],
    ),
    "test metric switched on a comparison re-run": (
        lambda ws: _run(
            ws,
            [
                "compare",
                "--output",
                str(ws / "comparison"),
                "compare.methods=[random]",
                "compare.seeds=[0]",
                "compare.budget_steps=[2]",
                "compare.test_metric=true",
            ],
        ),
        ["compare.test_metric=false", "choose a new output folder"],
    ),
    "scalar seeds": (_new("compare", "compare.seeds=3"), ["compare.seeds", "must be a list", "compare.seeds=[3]"]),
    "architecture override with --policy": (
        _new(
            "finetune",
            "--selector",
            "raise",
            "--policy",
            lambda ws: str(ws / "training" / "selector"),
            "raise.clusters=4",
        ),
        ["raise.clusters", "cannot change a trained selector"],
    ),
    "empty config file": (
        lambda ws: ["finetune", "--config", str(_write(ws / "empty.yaml", b"")), "--output", str(ws / "new")],
        ["empty.yaml is empty", "examples/configs"],
    ),
    "empty --pool": (_new("finetune", "--pool", ""), ["--pool is empty"]),
    "budget of many epochs": (
        _new("finetune", "train.budget_steps=100000"),
        ["train.budget_steps=100000", "passes over the 240-example pool", "train.max_budget_epochs=3334"],
    ),
    # tracebacks that are now one line
    "non-UTF-8 pool": (
        _new("finetune", "--pool", lambda ws: str(_bad_utf8_pool(ws))),
        ["latin1.jsonl:4", "not UTF-8", "pool.on_error=skip"],
    ),
    "non-UTF-8 target": (
        _new("finetune", lambda ws: f"target.name={_bad_utf8_pool(ws)}", "target.n_validation=4", "target.n_test=2"),
        ["latin1.jsonl:4", "not UTF-8"],
    ),
    "non-UTF-8 config": (
        lambda ws: [
            "finetune",
            "--config",
            str(_write(ws / "latin1.yaml", b"seed: 0 # caf\xe9\n")),
            "--output",
            str(ws / "new"),
        ],
        ["latin1.yaml is not UTF-8", "convert the file"],
    ),
    "malformed override value": (_new("compare", "compare.seeds=[0,1"), ["compare.seeds=[0,1", "not valid YAML"]),
    "empty seed list": (
        lambda ws: _run(ws, ["compare", "--output", str(ws / "comparison"), "compare.seeds=[]"]),
        ["compare.seeds is empty"],
    ),
    "output is a file": (lambda ws: _run(ws, ["finetune", "--output", str(ws / "config.yaml")]), ["is a file"]),
    "output under a file": (
        lambda ws: _run(ws, ["finetune", "--output", str(ws / "config.yaml" / "run")]),
        ["lies under the file", "config.yaml"],
    ),
    "unknown hub model": (
        _new("finetune", "model.name=org/absent-model"),
        ["unknown model 'org/absent-model'", "huggingface-cli download"],
    ),
    "unknown option": (_new("finetune", "--budget", "3"), ["unrecognized arguments: --budget", "--help"]),
}

# Out of range (the issue's own examples): (command, override, what the rule says).
OUT_OF_RANGE = {
    "zero temperature": ("train-selector", "raise.temperature=0", "must be > 0"),
    "zero episodes": ("train-selector", "raise.episodes=0", "must be >= 1"),
    "zero episode steps": ("train-selector", "raise.episode_steps=0", "or null"),
    "zero batch size": ("finetune", "train.batch_size=0", "must be >= 1"),
    "zero pca dim": ("finetune", "features.pca_dim=0", "must be >= 1"),
}
CASES.update(
    {
        name: (_new(command, override), [override.split("=")[0], rule])
        for name, (command, override, rule) in OUT_OF_RANGE.items()
    }
)


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_and_keeps_every_file(case, ws, capsys):
    build, expected = CASES[case]
    argv = build(ws)
    before = snapshot(ws)
    capsys.readouterr()
    started = time.perf_counter()
    status = main(argv)
    assert_one_line_error(status, capsys.readouterr(), expected)
    assert time.perf_counter() - started < 20  # no network retries, no training before the check
    assert snapshot(ws) == before


# Faults the environment causes: simulated, since the tests run as root and have a disk to spare.
def _read_only(monkeypatch, ws):
    monkeypatch.setattr(run_folders.os, "access", lambda path, mode: False)
    return ["finetune", "--output", str(ws / "new")], ["not writable", "choose another --output"]


def _unreadable_config(monkeypatch, ws):
    real = type(ws).read_text

    def read_text(path, *args, **kwargs):
        if path.name == "config.yaml" and path.parent == ws:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(type(ws), "read_text", read_text)
    return ["finetune", "--output", str(ws / "new")], ["cannot read the config", "Permission denied"]


def _disk_full(monkeypatch, ws):
    def fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io_utils.os, "fsync", fsync)
    return ["finetune", "--output", str(ws / "run")], ["No space left on device", "free disk space"]


def _cache_is_a_file(monkeypatch, ws):
    blocker = ws / "cache-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("RAISE_SELECT_CACHE", str(blocker))
    # a variant is built in the cache
    argv = ["finetune", "--output", str(ws / "new"), "model.name=synthetic-tiny@seed5"]
    return argv, [str(blocker), "set RAISE_SELECT_CACHE to a writable folder"]


def _cache_read_only(monkeypatch, ws, tmp_path):
    monkeypatch.setenv("RAISE_SELECT_CACHE", str(tmp_path / "cache"))

    def mkdtemp(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "cache"))

    monkeypatch.setattr(io_utils.tempfile, "mkdtemp", mkdtemp)
    return ["finetune", "--output", str(ws / "new")], ["Permission denied", "set RAISE_SELECT_CACHE"]


def _truncated_local_model(monkeypatch, ws, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(synthetic.synthetic_model_dir(), folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return ["finetune", "--output", str(ws / "new"), f"model.name={folder}"], ["could not load model", str(folder)]


FAULTS = {
    "read-only output": _read_only,
    "unreadable config": _unreadable_config,
    "disk full during a re-run": _disk_full,
    "cache path is a file": _cache_is_a_file,
    "read-only cache": _cache_read_only,
    "truncated weights in a model folder": _truncated_local_model,
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_faults_are_one_line_and_keep_every_file(fault, ws, tmp_path, monkeypatch, capsys):
    make = FAULTS[fault]
    argv, expected = make(monkeypatch, ws, tmp_path) if make.__code__.co_argcount == 3 else make(monkeypatch, ws)
    before = snapshot(ws)
    capsys.readouterr()
    status = main(_run(ws, argv))
    assert_one_line_error(status, capsys.readouterr(), expected)
    assert snapshot(ws) == before


def test_failed_run_into_a_new_folder_leaves_nothing(ws, monkeypatch, capsys):
    """A run that fails after it started writing (here: at its first decision) leaves no folder."""
    from raise_select.selectors.simple import RandomSelector

    def select(self, state):
        raise UserError("the selector failed")

    monkeypatch.setattr(RandomSelector, "select", select)
    before = snapshot(ws)
    status = main(_run(ws, ["finetune", "--output", str(ws / "new"), "--selector", "random"]))
    assert_one_line_error(status, capsys.readouterr(), ["the selector failed"])
    assert snapshot(ws) == before and not (ws / "new").exists()


def test_options_and_overrides_mix_in_any_order():
    args = parse_args(
        [
            "finetune",
            "--config",
            "c.yaml",
            "train.budget_steps=2",
            "--output",
            "o",
            "train.learning_rate=1e-4",
            "--seed",
            "3",
            "raise.clusters=2",
        ]
    )
    assert args.output == "o" and args.seed == 3
    assert args.overrides == ["train.budget_steps=2", "train.learning_rate=1e-4", "raise.clusters=2"]


def test_skip_mode_drops_a_non_utf8_line(ws):
    examples, skipped = load_source_file(SourceConfig(name=str(_bad_utf8_pool(ws))), on_error="skip")
    assert len(examples) == 11 and len(skipped) == 1 and "latin1.jsonl:4: not UTF-8" in skipped[0]


def test_non_finite_selector_is_refused_at_save(ws, tmp_path):
    artifact = load_artifact(ws / "training" / "selector")
    name = next(k for k in artifact.tensors if k.startswith("critic."))
    artifact.tensors[name] = torch.full_like(artifact.tensors[name], float("inf"))
    target = tmp_path / "selector"
    shutil.copytree(ws / "training" / "selector", target)
    before = snapshot(target)
    with pytest.raises(UserError, match=f"non-finite .* in {name}"):
        save_artifact(artifact, target)
    assert snapshot(target) == before and sorted(os.listdir(tmp_path)) == ["selector"]


def _failing_episode(*args, **kwargs):
    raise UserError("the episode failed")


def test_overwrite_keeps_the_old_training_until_the_first_new_episode(ws, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "training"
    shutil.copytree(ws / "training", folder)
    before = snapshot(folder)
    argv = _run(
        ws, ["train-selector", "--overwrite", "--output", str(folder), "raise.episodes=2", "raise.episode_steps=2"]
    )

    from raise_select import ppo

    with monkeypatch.context() as patch:
        patch.setattr(ppo, "run_episode", _failing_episode)
        status = main(argv)
    assert_one_line_error(status, capsys.readouterr(), ["the episode failed"])
    assert snapshot(folder) == before and sorted(os.listdir(tmp_path)) == ["training"]

    assert main(argv) == 0
    assert (folder / "checkpoint.pt").read_bytes() != before["checkpoint.pt"]
    assert sorted(os.listdir(tmp_path)) == ["training"]  # the old folder is gone, nothing else left


def test_resume_that_only_extends_the_episodes_continues(ws, tmp_path, monkeypatch, capsys):
    from raise_select import ppo

    folder = tmp_path / "training"
    shutil.copytree(ws / "training", folder)
    before = snapshot(folder)
    argv = _run(
        ws, ["train-selector", "--resume", "--output", str(folder), "raise.episodes=4", "raise.episode_steps=2"]
    )
    with monkeypatch.context() as patch:  # a resume that fails in its first new episode changes nothing
        patch.setattr(ppo, "run_episode", _failing_episode)
        assert_one_line_error(main(argv), capsys.readouterr(), ["the episode failed"])
    assert snapshot(folder) == before
    assert main(argv) == 0
    assert len((folder / "episodes.jsonl").read_text().splitlines()) == 4
    assert load_config(folder / "config.yaml").raise_.episodes == 4


def test_corrupt_cached_model_is_rebuilt(tmp_path, monkeypatch, caplog):
    """A truncated weight file of a cached model variant is detected by the manifest and rebuilt, not loaded."""
    shipped = synthetic.synthetic_model_dir()  # copied instead of pre-training a variant
    monkeypatch.setenv("RAISE_SELECT_CACHE", str(tmp_path))
    builds = []

    def build(folder, pretrain_seed):
        builds.append(pretrain_seed)
        for file in shipped.iterdir():
            if file.name != "manifest.json":
                shutil.copy2(file, folder / file.name)

    monkeypatch.setattr(synthetic, "_build_model", build)
    folder = synthetic.synthetic_model_dir(7)
    assert builds == [7] and (folder / "manifest.json").is_file() and folder.name.endswith("-seed7")
    assert synthetic.synthetic_model_dir(7) == folder and builds == [7]  # verified, not rebuilt

    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with caplog.at_level(logging.WARNING):
        assert synthetic.synthetic_model_dir(7) == folder
    assert builds == [7, 7] and "corrupt" in caplog.text and "model.safetensors" in caplog.text
    assert weights.read_bytes() == (shipped / "model.safetensors").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == [folder.name]


def test_shipped_testbed_model_is_verified_and_never_rebuilt(tmp_path, monkeypatch):
    """synthetic-tiny loads the packaged weights as they are; a damaged copy is a one-line error, not a rebuild."""
    monkeypatch.setattr(synthetic, "_build_model", lambda *args: pytest.fail("the shipped model was rebuilt"))
    monkeypatch.setenv("RAISE_SELECT_CACHE", str(tmp_path / "cache"))
    assert synthetic.synthetic_model_dir() == synthetic.SHIPPED_MODEL_DIR
    assert not (tmp_path / "cache").exists()  # nothing pre-trained, nothing cached
    damaged = tmp_path / "shipped"
    shutil.copytree(synthetic.SHIPPED_MODEL_DIR, damaged)
    weights = damaged / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    monkeypatch.setattr(synthetic, "SHIPPED_MODEL_DIR", damaged)
    with pytest.raises(UserError, match="shipped testbed model .* is damaged .*model.safetensors has 1000 bytes"):
        synthetic.synthetic_model_dir()


@pytest.mark.parametrize("interrupt_at", [1, 3])
def test_comparison_interrupted_while_training_its_selector_resumes(ws, tmp_path, monkeypatch, interrupt_at):
    """Ctrl-C in the first PPO update's episodes (nothing kept) or the second's (a checkpoint kept): the same command resumes."""
    from raise_select import ppo

    argv = _run(
        ws,
        [
            "compare",
            "--output",
            str(tmp_path / "comparison"),
            "compare.methods=[raise]",
            "compare.seeds=[0]",
            "compare.budget_steps=[2]",
            "compare.test_metric=false",
            "raise.episodes=4",
        ],
    )
    real_episode, calls = ppo.run_episode, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == interrupt_at:
            raise KeyboardInterrupt
        return real_episode(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(ppo, "run_episode", interrupted)
        assert main(argv) == 130
    kept = sorted(os.listdir(tmp_path / "comparison"))
    assert kept == (["config.yaml", "data.json"] if interrupt_at == 1 else ["config.yaml", "data.json", "selector-s0"])
    assert main(argv) == 0
    assert len((tmp_path / "comparison" / "selector-s0" / "episodes.jsonl").read_text().splitlines()) == 4


# -- concurrent and interrupted commands: real processes --------------------------------------------

LONG_RUN = "train.budget_steps=400"  # long enough to be caught in the middle (a few seconds on the testbed)


def _start(ws, argv) -> subprocess.Popen:
    command = [sys.executable, "-m", "raise_select.cli", *_run(ws, argv)]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_for(condition, process: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 60
    while not condition():
        assert process.poll() is None, f"the command ended before {what}: {process.stderr.read()}"
        assert time.monotonic() < deadline, f"no {what} after 60 s"
        time.sleep(0.05)


def _lock_record(folder) -> dict | None:
    try:
        return json.loads(run_folders.lock_path(folder).read_text())
    except (OSError, ValueError):
        return None


def test_a_busy_output_is_refused_naming_the_holder(ws, tmp_path, capsys):
    """A second command into a folder another one is writing: one line naming the holder, nothing
    changed; once the holder is killed (-9) its lock file is stale and the next command takes it over."""
    shutil.copytree(ws / "run", tmp_path / "run")
    holder = _start(ws, ["finetune", "--output", str(tmp_path / "run"), LONG_RUN])
    try:
        _wait_for(lambda: _lock_record(tmp_path / "run"), holder, "lock")
        before = snapshot(tmp_path / "run")
        for argv in (
            _run(ws, ["finetune", "--output", str(tmp_path / "run")]),
            _run(ws, ["compare", "--output", str(tmp_path / "sub" / ".." / "run")]),  # the same folder, spelt otherwise
            ["report", str(tmp_path / "run")],
        ):
            capsys.readouterr()
            expected = ["is in use by raise-select finetune", f"(pid {holder.pid} ", "started ", "wait for it"]
            assert_one_line_error(main(argv), capsys.readouterr(), expected)
            assert snapshot(tmp_path / "run") == before
        assert not (tmp_path / "sub").exists()
        holder.kill()
        holder.wait(timeout=30)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    assert _lock_record(tmp_path / "run")["pid"] == holder.pid  # left behind by the killed holder
    assert main(_run(ws, ["finetune", "--output", str(tmp_path / "run")])) == 0
    assert sorted(os.listdir(tmp_path)) == ["run"]  # stale lock file and the killed run's staging folder gone


@pytest.mark.parametrize(
    "command, signal_number",
    [("finetune", signal.SIGTERM), ("compare", signal.SIGHUP)],
)
def test_termination_signals_unwind_like_ctrl_c(ws, tmp_path, command, signal_number):
    """SIGTERM/SIGHUP in the middle of a run: exit 128+N, the finished folder byte-identical, no
    temporary folder or lock file left; leftovers of a run killed with -9 go with the next run."""
    folder = tmp_path / "output"
    if command == "finetune":
        shutil.copytree(ws / "run", folder)
        argv, staging_parent = ["finetune", "--output", str(folder), LONG_RUN], tmp_path
    else:  # a finished comparison extended by a method whose run is long
        shutil.copytree(ws / "comparison", folder)
        argv = ["compare", "--output", str(folder), "compare.methods=[random,full]", "compare.seeds=[0]"]
        argv += ["compare.budget_steps=[2]", "compare.test_metric=false"]
        staging_parent = folder / "runs"
    (folder / ".config.yaml.abcd1234.tmp").write_text("an atomic write killed with -9")
    killed_run = staging_parent / f".{'output' if command == 'finetune' else 'random-2steps-s0'}.zz99yy88.tmp"
    killed_run.mkdir()
    process = _start(ws, argv)
    try:
        _wait_for(lambda: any(p.suffix == ".tmp" and p != killed_run for p in staging_parent.iterdir()), process, "run")
        assert not killed_run.exists() and not (folder / ".config.yaml.abcd1234.tmp").exists()
        before = snapshot(tmp_path)
        before = {k: v for k, v in before.items() if ".tmp" not in k and ".lock" not in k}
        process.send_signal(signal_number)
        assert process.wait(timeout=30) == 128 + signal_number
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.stderr.read().strip() == f"interrupted by {signal.Signals(signal_number).name}"
    assert snapshot(tmp_path) == before


def test_skipped_records_are_counted_on_stderr_in_the_run_folder_and_the_report(ws, tmp_path, caplog):
    """pool.on_error=skip: one warning (stderr in the CLI) with the count and the first reasons, the
    same in summary.json and report.md."""
    argv = _run(ws, ["finetune", "--output", str(tmp_path / "run"), "--pool", str(_bad_utf8_pool(ws))])
    with caplog.at_level(logging.WARNING):
        assert main([*argv, "pool.on_error=skip", "--no-test"]) == 0
    warnings = [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
    assert len(warnings) == 1 and len(warnings[0].splitlines()) == 1, warnings
    note = warnings[0]
    assert note.startswith("pool.on_error=skip dropped 1 malformed record from the pool: ")
    assert "latin1.jsonl:4: not UTF-8" in note
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["skipped_records"] == 1 and "latin1.jsonl:4: not UTF-8" in summary["skipped_reasons"][0]
    assert main(["report", str(tmp_path / "run")]) == 0
    assert note in (tmp_path / "run" / "report.md").read_text()


@pytest.mark.parametrize("name, new_folder", [("training", "empty"), ("run", "missing")])
def test_a_folder_moved_aside_by_a_killed_run_comes_back(ws, tmp_path, name, new_folder):
    """Killed (-9) after the old folder was moved aside: before the first new episode of --overwrite
    (the new folder still empty), or between a finetune's two renames (no folder): the next command
    into it puts the old folder back and drops the unfinished run."""
    shutil.copytree(ws / name, tmp_path / f".{name}.old-999999")
    (tmp_path / f".{name}.abcd1234.tmp").mkdir()
    if new_folder == "empty":
        (tmp_path / name).mkdir()
    with run_folders.output_lock(tmp_path / name, "finetune"):
        pass
    assert sorted(os.listdir(tmp_path)) == [name]
    assert snapshot(tmp_path / name) == snapshot(ws / name)


# -- the third pass: each class of input that used to give a traceback, be silently reinterpreted or
# get a misleading message, in one test per class (cases: argv builders as in CASES, run in-process).


def _pool_file(ws, name: str, records: list) -> str:
    return str(_write(ws / name, "".join(json.dumps(r) + "\n" for r in records).encode()))


def _pool_with(ws, name: str, bad: dict, chat: bool = False) -> str:
    """A 40-record pool whose sixth record is ``bad``."""
    if chat:
        good = [
            {"messages": [{"role": "user", "content": f"say {i}"}, {"role": "assistant", "content": str(i)}]}
            for i in range(40)
        ]
    else:
        good = [{"prompt": f"say {i}", "response": str(i)} for i in range(40)]
    good[5] = bad
    return _pool_file(ws, name, good)


def _two_point_pool(ws) -> str:
    return _pool_file(ws, "two.jsonl", [{"prompt": f"say {i % 2}", "response": str(i % 2)} for i in range(24)])


def _edited_selector(ws, name: str, edit) -> str:
    """A copy of the workspace's trained selector whose selector.json ``edit`` changed."""
    folder = ws / name
    if not folder.exists():
        shutil.copytree(ws / "training" / "selector", folder)
        metadata = json.loads((folder / "selector.json").read_text())
        edit(metadata)
        (folder / "selector.json").write_text(json.dumps(metadata))
    return str(folder)


def _edited_copy(ws, name: str, source: str, file: str, text: str) -> str:
    """A copy of one of the workspace's folders with ``file`` replaced by ``text``."""
    folder = ws / name
    if not folder.exists():
        shutil.copytree(ws / source, folder)
        (folder / file).write_text(text)
    return str(folder)


def _config_text(ws, name: str, edit) -> str:
    return str(_write(ws / name, edit((ws / "config.yaml").read_text()).encode()))


def _report(folder):
    return lambda ws: ["report", folder(ws)]


TRACEBACKS = {
    "seed beyond numpy's 2**32 (finetune)": (
        _new("finetune", "--seed", str(2**32)),
        ["seed=4294967296", "<= 4294967295"],
    ),
    "seed beyond numpy's 2**32 (train-selector)": (
        _new("train-selector", f"seed={2**32}"),
        ["seed=4294967296", "out of range"],
    ),
    "a size far beyond memory": (_new("finetune", "features.pca_dim=1.0e+30"), ["features.pca_dim=", "<= 4096"]),
    "a selector seed beyond 2**32": (_new("compare", f"compare.selector_seeds=[{2**32}]"), ["selector_seeds[0]"]),
    "a fields value that is not a string": (
        _new("finetune", "pool.sources=[{name: qa.jsonl, fields: {prompt: 3}}]"),
        ["pool.sources[0].fields", "maps names to names", "'prompt': 3"],
    ),
    "selector.json standardization of the wrong length": (
        _new(
            "finetune",
            "--policy",
            lambda ws: _edited_selector(ws, "short-std", lambda m: m["standardization"]["difficulty_mean"].pop()),
        ),
        ["selector.json is inconsistent", "standardization.difficulty_mean must be 6"],
    ),
    "selector.json centroids of the wrong width": (
        _new(
            "finetune",
            "--policy",
            lambda ws: _edited_selector(ws, "narrow", lambda m: [row.pop() for row in m["centroids"]]),
        ),
        ["selector.json is inconsistent", "centroids[0] must be 8"],
    ),
    "selector.json feature layout shortened": (
        _new("finetune", "--policy", lambda ws: _edited_selector(ws, "layout", lambda m: m["feature_layout"].pop(0))),
        ["selector.json is inconsistent", "feature_layout has 13 static columns for 6 static_names and pca_dim=8"],
    ),
    "selector.json feature layout without its last column": (
        _new("finetune", "--policy", lambda ws: _edited_selector(ws, "no-avail", lambda m: m["feature_layout"].pop())),
        ["selector.json is inconsistent", "17 feature_layout columns for weights that read 18"],
    ),
    "report: a selector.json that is a list (found after plots were drawn)": (
        _report(lambda ws: _edited_copy(ws, "selector-list", "training", "selector/selector.json", "[]")),
        ["selector.json is not the file raise-select writes", "JSON list"],
    ),
    "report: a results row without its method": (
        _report(lambda ws: _edited_copy(ws, "no-method", "comparison", "results.json", '{"rows": [{"seed": 0}]}')),
        ["results.json", "rows[0] has no 'method'"],
    ),
    "report: results.json as a list": (
        _report(lambda ws: _edited_copy(ws, "results-list", "comparison", "results.json", "[1, 2]")),
        ["results.json is not the file raise-select writes", "JSON list, not an object"],
    ),
    "report: results.json rows not a list": (
        _report(lambda ws: _edited_copy(ws, "rows-number", "comparison", "results.json", '{"rows": 5}')),
        ["results.json", "'rows' is a JSON number, not a list"],
    ),
    "report: a metrics.jsonl line that is a list": (
        _report(lambda ws: _edited_copy(ws, "metrics-list", "run", "metrics.jsonl", "[1, 2]\n")),
        ["metrics.jsonl", "line 1 is a JSON list"],
    ),
    "report: summary.json as a list": (
        _report(lambda ws: _edited_copy(ws, "summary-list", "run", "summary.json", "[]")),
        ["summary.json", "JSON list"],
    ),
}

REINTERPRETED = {
    "a second model: section": (
        lambda ws: [
            "finetune",
            "--config",
            _config_text(ws, "twice.yaml", lambda text: text + "model:\n  finetune: lora\n"),
            "--output",
            str(ws / "new"),
        ],
        ["twice.yaml line", "sets 'model' again (first on line", "merge the two"],
    ),
    "a key twice inside a section": (
        lambda ws: [
            "finetune",
            "--config",
            _config_text(ws, "nested.yaml", lambda text: text.replace("train:\n", "train:\n  learning_rate: 0.5\n", 1)),
            "--output",
            str(ws / "new"),
        ],
        ["nested.yaml line", "sets 'learning_rate' again"],
    ),
    "a key twice in an override": (
        _new("finetune", "pool.sources=[{name: synthetic, name: gsm8k}]"),
        ["sets 'name' twice"],
    ),
    "a misspelled chat role": (
        _new(
            "finetune",
            "--pool",
            lambda ws: _pool_with(
                ws,
                "asistant.jsonl",
                {"messages": [{"role": "user", "content": "q"}, {"role": "asistant", "content": "a"}]},
                chat=True,
            ),
        ),
        ["asistant.jsonl:6", "unknown role 'asistant'", "allowed roles: system, user, assistant"],
    ),
    "an unknown chat role": (
        _new(
            "finetune",
            "--pool",
            lambda ws: _pool_with(
                ws,
                "human.jsonl",
                {"messages": [{"role": "human", "content": "q"}, {"role": "assistant", "content": "a"}]},
                chat=True,
            ),
        ),
        ["human.jsonl:6", "unknown role 'human'"],
    ),
    "a whitespace-only response": (
        _new("finetune", "--pool", lambda ws: _pool_with(ws, "blank.jsonl", {"prompt": "q", "response": " \n\t"})),
        ["blank.jsonl:6", "the response is only whitespace"],
    ),
    "a selector whose clusters disagree with its centroids": (
        _new(
            "finetune",
            "--policy",
            lambda ws: _edited_selector(ws, "four-clusters", lambda m: m["config"].update(clusters=4)),
        ),
        ["selector.json is inconsistent", "2 centroids for config.clusters=4"],
    ),
    "fewer distinct examples than raise.clusters in a new comparison (no folder left)": (
        _new(
            "compare",
            lambda ws: f"pool.sources=[{{name: {_two_point_pool(ws)}}}]",
            "raise.clusters=4",
            "compare.methods=[raise]",
            "compare.budget_steps=[2]",
            "compare.seeds=[0]",
        ),
        ["k-means finds only 2 distinct clusters", "raise.clusters=4", "set raise.clusters=2 or fewer"],
    ),
}


def _training_copy(ws, name: str, edit) -> str:
    folder = ws / name
    if not folder.exists():
        shutil.copytree(ws / "training", folder)
        edit(folder)
    return str(folder)


def _truncate(path):
    path.write_bytes(path.read_bytes()[:1000])


MISLEADING = {
    "a config error next to an override of its section": (
        lambda ws: [
            "finetune",
            "--config",
            _config_text(ws, "list.yaml", lambda text: text.replace("train:\n", "train: [1, 2]\nformer_train:\n", 1)),
            "--output",
            str(ws / "new"),
            "train.budget_steps=2",
        ],
        ["list.yaml: 'train' must be a mapping of fields, got [1, 2]", "fix the file"],
    ),
    "raise.proxy_layers beyond the model": (
        _new("train-selector", "raise.proxy_layers=9"),
        ["raise.proxy_layers=9 but model 'synthetic-tiny' has 3 decoder layers"],
    ),
    "raise.proxy_layers beyond the model in a comparison": (
        _new("compare", "raise.proxy_layers=9", "compare.methods=[raise]"),
        ["raise.proxy_layers=9 but model 'synthetic-tiny' has 3"],
    ),
    "a truncated checkpoint": (
        lambda ws: _run(
            ws,
            [
                "train-selector",
                "--resume",
                "--output",
                _training_copy(ws, "truncated", lambda f: _truncate(f / "checkpoint.pt")),
                "raise.episode_steps=2",
            ],
        ),
        ["checkpoint.pt is not a readable", "--overwrite instead of --resume"],
    ),
    "a corrupt but parseable config.yaml in a selector training": (
        lambda ws: _run(
            ws,
            [
                "train-selector",
                "--resume",
                "--output",
                _training_copy(ws, "damaged", lambda f: (f / "config.yaml").write_text("seed: 0\n")),
                "raise.episode_steps=2",
            ],
        ),
        ["config.yaml is damaged (it has no model, pool", "restore the file"],
    ),
    "compare into a selector training": (
        lambda ws: _run(ws, ["compare", "--output", str(ws / "training")]),
        ["is a selector-training folder (train-selector), not a comparison folder"],
    ),
    "a warning before the error": (
        _new(
            "finetune",
            "--pool",
            lambda ws: _pool_with(ws, "one-bad.jsonl", {"prompt": "x"}),
            "pool.on_error=skip",
            "train.budget_steps=100000",
        ),
        ["train.budget_steps=100000", "passes over the 39-example pool"],
    ),
}


@pytest.mark.parametrize(
    "table, case",
    [
        pytest.param(table, case, id=f"{name}: {case}")
        for name, table in (
            ("traceback", TRACEBACKS),
            ("reinterpreted", REINTERPRETED),
            ("misleading", MISLEADING),
        )
        for case in table
    ],
)
def test_third_pass_inputs_are_one_line_and_keep_every_file(table, case, ws, capsys, monkeypatch):
    """Tracebacks, silently reinterpreted input and misleading messages: one ``error:`` line that says
    what is wrong (and where), exit 2, every file byte-identical."""
    monkeypatch.chdir(ws)  # relative pool paths in overrides
    build, expected = table[case]
    argv = build(ws)
    before = snapshot(ws)
    capsys.readouterr()
    assert_one_line_error(main(argv), capsys.readouterr(), expected)
    assert snapshot(ws) == before


def test_every_integer_setting_has_an_upper_bound():
    """A typo (an extra digit, 1e30) in any integer setting is refused by its range, never passed to
    numpy, torch or the allocator: every int field's range (or each element's) names an upper bound."""
    from raise_select.config import Config, _settings

    unbounded = [
        name
        for name, f, _, _ in _settings(Config())
        if "int" in str(f.type) and "<=" not in f.metadata.get("range", f.metadata.get("each_range", ""))
    ]
    assert unbounded == []
