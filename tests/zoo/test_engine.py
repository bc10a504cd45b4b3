"""zoo.train engine on the toy trainer: falling loss, logs, checkpoints, exact resume after SIGKILL, output rules."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import zoo
from zoo.errors import CheckpointFormatError, ConfigError, OutputExistsError
from zoo.train import ResumableBatchSampler, list_checkpoints, load_checkpoint, load_recipe, run
from zoo.train.schedule import build_optimizer, lr_factor

TOY = "trainer=zoo.train.toy:ToyTrainer"


def _config(out, *overrides):
    return load_recipe(None, [TOY, f"train.output_dir={out}", "train.max_steps=12", "train.batch_size=8",
                              "train.log_every=1", "train.ckpt_every=4", "train.keep_last=2", "optim.lr=0.02",
                              "train.progress=false", *overrides])


def _train_lines(out):
    lines = [json.loads(line) for line in (Path(out) / "log.jsonl").read_text().splitlines()]
    return [line for line in lines if "loss" in line], [line for line in lines if "eval" in line]


def test_training_run_writes_logs_checkpoints_and_final(tmp_path):
    out = tmp_path / "run"
    final = run(_config(out, "train.eval_every=6", "schedule.name=cosine", "schedule.warmup_steps=2",
                        "train.clip_grad_norm=1.0"))
    assert final == out / "final"
    train, evals = _train_lines(out)
    assert [line["step"] for line in train] == list(range(1, 13))
    losses = [line["loss"] for line in train]
    assert sum(losses[-4:]) < 0.6 * sum(losses[:4])  # batches of 8 are noisy: compare 4-step means
    assert {"lr", "loss", "mae", "grad_norm", "samples_per_s", "epoch"} <= set(train[0])
    assert train[0]["lr"] == pytest.approx(0.01) and train[1]["lr"] == pytest.approx(0.02)  # warmup
    assert [e["step"] for e in evals] == [6, 12] and evals[1]["eval"]["mse"] < evals[0]["eval"]["mse"]
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert [step for step, _ in list_checkpoints(out)] == [4, 8]  # keep_last=2; no checkpoint at the end
    state = load_checkpoint(out / "checkpoints" / "step-00000008")
    # 64 items / 8 = 8 batches per epoch: epoch 0 fully consumed, the next one starts on resume
    assert (state["step"], state["epoch"], state["batches_done"]) == (8, 0, 8)
    assert set(state) >= {"model", "optimizer", "scheduler", "trainer", "rng"}
    assert state["trainer"]["steps_seen"] == 8
    run_info = json.loads((out / "run.json").read_text())
    assert run_info["status"] == "finished" and run_info["config"]["train"]["max_steps"] == 12
    # the final folder is the zoo format: the same weights come back through zoo.load
    model = zoo.load(str(final))
    weights = load_file(str(final / "model.safetensors"))
    for key, value in model.state_dict().items():
        assert torch.equal(value, weights[key])
    assert model.config == {"in_dim": 4, "hidden": 16, "dropout": 0.1}


RESUME_OVERRIDES = [
    "trainer=zoo.train.toy:ToyTrainer", "train.max_steps=20", "train.log_every=1", "train.ckpt_every=5",
    "train.batch_size=6", "train.grad_accum=2", "data.train_size=40", "toy.jitter=0.1", "schedule.name=cosine",
    "schedule.warmup_steps=3", "train.clip_grad_norm=1.0", "train.eval_every=4", "train.tensorboard=false",
    "train.progress=false", "optim.lr=0.01"]
RESUME_SCRIPT = textwrap.dedent("""
    import json, os, signal, sys
    import torch
    torch.set_num_threads(1)
    import zoo.train.engine as engine
    from zoo.train import load_recipe, run

    out, kill_at, overrides = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
    if kill_at:
        original = engine.save_checkpoint
        def save_then_die(output_dir, step, payload, **kw):
            path = original(output_dir, step, payload, **kw)
            if step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no atexit: like a lost machine
            return path
        engine.save_checkpoint = save_then_die
    run(load_recipe(None, [f"train.output_dir={out}", *overrides]))
""")


def _script(tmp_path, *args, wait=True):
    script = tmp_path / "resume_run.py"
    script.write_text(RESUME_SCRIPT)
    command = [sys.executable, str(script), *map(str, args), json.dumps(RESUME_OVERRIDES)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if not wait:
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)


def test_exact_resume_after_sigkill(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    crash = _script(tmp_path, killed, 10, wait=False)
    try:  # the uninterrupted reference trains here, in another process than the killed and resumed one
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            run(load_recipe(None, [f"train.output_dir={straight}", *RESUME_OVERRIDES]))
        finally:
            torch.set_num_threads(threads)
        _, err = crash.communicate(timeout=120)
    finally:
        if crash.poll() is None:
            crash.kill()
            crash.wait()
    assert crash.returncode == -9, err  # SIGKILL
    lines, _ = _train_lines(killed)
    assert [line["step"] for line in lines] == list(range(1, 11))
    assert [step for step, _ in list_checkpoints(killed)] == [5, 10]
    state = load_checkpoint(killed / "checkpoints" / "step-00000010")
    assert (state["epoch"], state["batches_done"]) == (3, 2)  # 6 batches per epoch, 2 per step: mid-epoch
    resumed = _script(tmp_path, killed, 0)
    assert resumed.returncode == 0, resumed.stderr

    def fields(out):
        train, evals = _train_lines(out)
        keep = ("step", "epoch", "loss", "lr", "mae", "grad_norm")
        return [{k: line[k] for k in keep} for line in train], evals

    assert fields(killed) == fields(straight)  # bit-identical floats: JSON keeps every digit
    assert len(fields(killed)[0]) == 20
    a, b = load_file(str(straight / "final" / "model.safetensors")), load_file(str(killed / "final" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_output_folder_rules(tmp_path):
    out = tmp_path / "run"
    run(_config(out, "train.max_steps=2", "train.tensorboard=false"))
    stamp = (out / "final" / "model.safetensors").stat().st_mtime_ns
    # the same finished run again: nothing to do, nothing rewritten
    assert run(_config(out, "train.max_steps=2", "train.tensorboard=false")) == out / "final"
    assert (out / "final" / "model.safetensors").stat().st_mtime_ns == stamp
    with pytest.raises(OutputExistsError, match="different finished run"):
        run(_config(out, "train.max_steps=3", "train.tensorboard=false"))
    run(_config(out, "train.max_steps=3", "train.tensorboard=false", "train.overwrite=true"))
    assert [line["step"] for line in _train_lines(out)[0]] == [1, 2, 3]
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="holds no zoo training run"):
        run(_config(foreign, "train.max_steps=1"))
    with pytest.raises(ConfigError, match="no checkpoint"):
        run(_config(tmp_path / "empty", "train.max_steps=1", "train.resume=true"))


def test_paths_checked_before_training(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.file: .*missing\.jsonl' does not exist"):
        run(_config(tmp_path / "run", f"data.file={tmp_path / 'missing.jsonl'}"))
    assert not (tmp_path / "run").exists()
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"x": [i, 1, 0, -i], "y": i / 10}) + "\n" for i in range(16)))
    final = run(_config(tmp_path / "run", f"data.file={rows}", "train.max_steps=2", "train.tensorboard=false"))
    assert (final / "model.safetensors").is_file()


def test_a_user_error_while_preparing_data_leaves_no_folder_behind(tmp_path):
    """Data the engine cannot check by path (a bad row, a missing file inside a manifest) fails in
    build_datasets; the folder that run created used to stay behind holding a "preparing" run.json."""
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"x": [0, 1, 0, 0], "y": 0.1}\n{"x": [1, 1\n')
    out = tmp_path / "new" / "run"
    with pytest.raises(ConfigError, match=r"rows.jsonl, line 2: not valid JSON"):
        run(_config(out, f"data.file={rows}"))
    assert not out.exists()
    kept = tmp_path / "kept"  # a folder the user made stays, whatever happens
    kept.mkdir()
    with pytest.raises(ConfigError, match="line 2"):
        run(_config(kept, f"data.file={rows}"))
    assert kept.is_dir()


def test_grad_accumulation_matches_a_larger_batch(tmp_path):
    # fp32: on a GPU, bf16 autocast (precision=auto) rounds the two batchings differently
    common = ["model.dropout=0.0", "data.augment=0.0", "train.max_steps=4", "train.tensorboard=false",
              "optim.name=sgd", "optim.lr=0.1", "train.precision=fp32"]
    big = run(_config(tmp_path / "big", "train.batch_size=8", *common))
    small = run(_config(tmp_path / "small", "train.batch_size=4", "train.grad_accum=2", *common))
    a, b = load_file(str(big / "model.safetensors")), load_file(str(small / "model.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-5)


def test_schedules_and_optimizers():
    kw = dict(warmup_steps=4, total_steps=14)
    assert [lr_factor(s, name="constant", **kw) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert lr_factor(9, name="linear", **kw) == pytest.approx(0.5)
    assert lr_factor(9, name="cosine", **kw) == pytest.approx(0.5)
    assert lr_factor(14, name="cosine", **kw) == pytest.approx(0.0)
    assert lr_factor(14, name="linear", min_lr_ratio=0.1, **kw) == pytest.approx(0.1)
    assert lr_factor(9, name="polynomial", power=2.0, **kw) == pytest.approx(0.25)
    params = [torch.nn.Parameter(torch.zeros(2))]
    assert isinstance(build_optimizer(params, {"name": "sgd", "lr": 0.1, "momentum": 0.9}), torch.optim.SGD)
    assert isinstance(build_optimizer(params, {"name": "adam", "lr": 0.1}), torch.optim.Adam)
    with pytest.raises(ConfigError, match="optim.name"):
        build_optimizer(params, {"name": "lamb", "lr": 0.1})


def test_resumable_sampler_shards_and_skips():
    full = ResumableBatchSampler(10, 2, seed=3, drop_last=False)
    epoch0 = [i for batch in full for i in batch]
    assert sorted(epoch0) == list(range(10))
    full.set_position(1, 0)
    assert [i for batch in full for i in batch] != epoch0  # a new permutation each epoch
    full.set_position(0, 3)
    assert [i for batch in full for i in batch] == epoch0[6:]  # resume skips exactly the consumed batches
    ranks = [ResumableBatchSampler(10, 2, seed=3, rank=r, world_size=2) for r in range(2)]
    shards = [[i for batch in s for i in batch] for s in ranks]
    assert len(shards[0]) == len(shards[1]) == 4 and not set(shards[0]) & set(shards[1])
    with pytest.raises(ConfigError, match="fewer than one batch"):
        ResumableBatchSampler(3, 4)


def test_bad_checkpoint_and_bad_settings(tmp_path):
    (tmp_path / "state.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointFormatError, match="Cannot read"):
        load_checkpoint(tmp_path)
    with pytest.raises(ConfigError, match="bf16 needs a CUDA"):
        run(_config(tmp_path / "x", "train.precision=bf16", "train.device=cpu"))
    with pytest.raises(ConfigError, match="max_steps must be a positive"):
        run(_config(tmp_path / "y", "train.max_steps=0"))


def test_cli_trains_and_reports_errors(tmp_path, capsys):
    from zoo.cli import main

    recipe = tmp_path / "toy.yaml"
    recipe.write_text("trainer: zoo.train.toy:ToyTrainer\ntrain:\n  max_steps: 3\n  tensorboard: false\n")
    out = tmp_path / "cli-run"
    assert main(["train", "zoo.train.toy:ToyTrainer", "--config", str(recipe), f"train.output_dir={out}"]) == 0
    assert capsys.readouterr().out.strip() == str(out / "final")
    assert main(["train", "toy-regression", "--config", str(recipe), f"train.output_dir={out}",
                 "train.max_steps=4"]) == 2
    assert "different finished run" in capsys.readouterr().err
    assert main(["train", "toy-regression", "--config", str(recipe), f"train.output_dir={out}",
                 "train.max_steps=4", "--overwrite"]) == 0
    assert main(["train", "toy-regression", "--config", str(recipe), "train.max_stepz=4"]) == 2
    assert "Unknown config key 'train.max_stepz'" in capsys.readouterr().err


def test_progress_lines_when_stderr_is_not_a_terminal(tmp_path, capsys):
    from zoo.train.logs import format_progress

    assert format_progress({"step": 40, "loss": 2.31415}, 500, 0, 4.0, batch_size=8) == \
        "step 40/500 (8%) | loss 2.314 | 10 steps/s, 80 samples/s | ETA 0:00:46"
    assert format_progress({"step": 30, "loss": 1.0}, 40, 20, 5.0) == "step 30/40 (75%) | loss 1 | 2 steps/s | ETA 0:00:05"
    run(_config(tmp_path / "run", "train.progress=auto", "train.log_every=4", "train.tensorboard=false"))
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("step ")]
    assert [line.split(" | ")[0] for line in lines] == ["step 4/12 (33%)", "step 8/12 (66%)", "step 12/12 (100%)"]
    assert all(" steps/s, " in line and " samples/s | ETA " in line for line in lines)
    with pytest.raises(ConfigError, match="train.progress must be auto, bar, lines or false"):
        run(_config(tmp_path / "other", "train.progress=sometimes"))


def _cli_train(out, *overrides):
    """`zoo train` of the toy trainer as a real process, slowed down so that tests can act on it."""
    command = [sys.executable, "-m", "zoo.cli", "train", "zoo.train.toy:ToyTrainer", f"train.output_dir={out}",
               "train.max_steps=30", "train.batch_size=8", "train.log_every=1", "train.tensorboard=false",
               "train.progress=false", "optim.lr=0.02", "toy.step_seconds=0.05", *overrides]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def _wait_for(condition, process, seconds=90):
    deadline = time.monotonic() + seconds
    while not condition():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the training process did not get there in time"
        time.sleep(0.05)


def test_one_run_per_folder_and_resume_after_kill(tmp_path, capsys):
    from zoo.cli import main
    from zoo.errors import OutputInUseError

    out = tmp_path / "run"
    first = _cli_train(out, "train.ckpt_every=3")
    try:
        _wait_for(lambda: (out / "checkpoints" / "step-00000003").is_dir(), first)
        overrides = [f"train.output_dir={out}", "train.max_steps=30", "train.batch_size=8", "train.log_every=1",
                     "train.tensorboard=false", "train.progress=false", "optim.lr=0.02", "toy.step_seconds=0.05",
                     "train.ckpt_every=3"]
        with pytest.raises(OutputInUseError, match=f"train.output_dir {out} is in use by another process "
                                                   f"\\(pid {first.pid}\\)"):
            run(load_recipe(None, [TOY, *overrides]))
        assert main(["train", "zoo.train.toy:ToyTrainer", *overrides]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"(pid {first.pid})" in err
        assert first.poll() is None  # the first run was not disturbed
    finally:
        first.kill()  # SIGKILL: the kernel drops its lock
        first.wait()
    done = run(load_recipe(None, [TOY, *overrides]))  # resumes from its last checkpoint
    steps = [line["step"] for line in _train_lines(out)[0]]
    assert steps[-1] == 30 and steps == list(range(1, 31)) and (done / "model.safetensors").is_file()


def test_ctrl_c_saves_the_last_finished_step_and_resume_is_exact(tmp_path):
    out, straight = tmp_path / "interrupted", tmp_path / "straight"
    common = ["train.max_steps=30", "train.batch_size=8", "train.log_every=1", "train.tensorboard=false",
              "train.progress=false", "optim.lr=0.02", "train.ckpt_every=0", "toy.jitter=0.1"]
    process = _cli_train(out, "train.ckpt_every=0", "toy.jitter=0.1")
    _wait_for(lambda: (out / "log.jsonl").is_file() and len((out / "log.jsonl").read_text().splitlines()) >= 5,
              process)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    stopped = int(err.split("stopped at step ")[1].split("/")[0])
    assert stopped >= 5 and "Run the same command again to resume" in err
    assert [step for step, _ in list_checkpoints(out)] == [stopped]  # ckpt_every=0: only the Ctrl-C one
    assert [line["step"] for line in _train_lines(out)[0]] == list(range(1, stopped + 1))

    run(load_recipe(None, [TOY, f"train.output_dir={out}", "toy.step_seconds=0.05", *common]))
    run(load_recipe(None, [TOY, f"train.output_dir={straight}", *common]))  # the reference need not be slowed

    def fields(folder):
        return [{k: line[k] for k in ("step", "loss", "lr", "mae")} for line in _train_lines(folder)[0]]

    assert fields(out) == fields(straight) and len(fields(out)) == 30
    a, b = load_file(str(straight / "final" / "model.safetensors")), load_file(str(out / "final" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bad_train_device_is_a_config_error_before_anything_is_written(tmp_path):
    """`train.device=gpu` used to reach torch.device and fail with torch's RuntimeError."""
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match="train.device='gpu' is not a torch device"):
        run(_config(out, "train.device=gpu"))
    assert not out.exists()


def test_default_build_model_follows_the_model_section(tmp_path):
    from zoo.train import Trainer
    from zoo.testing.toy_family import register

    register()
    fresh = Trainer({"family": "toy", "model": {"size": "small", "overrides": {"num_classes": 5}, "init": None}})
    model = fresh.build_model()
    assert model.training and model.config == {"dim": 8, "hidden": 32, "num_classes": 5, "size": "small"}
    folder = model.save_pretrained(tmp_path / "init")
    loaded = Trainer({"family": "toy", "model": {"init": str(folder), "overrides": {"num_classes": 7}}}).build_model()
    assert torch.equal(loaded.encoder.weight, model.encoder.weight) and loaded.classifier.out_features == 7
    with pytest.raises(ConfigError, match="Unknown config key 'hiden' in model.overrides"):
        Trainer({"family": "toy", "model": {"overrides": {"hiden": 3}}}).build_model()


def test_hubert_tiny_encoder_is_what_the_speech_tiny_sizes_use():
    """One definition of the CPU-test HuBERT width (the speech builders repeat it today)."""
    from zoo.models.configs import HUBERT_TINY_ENCODER
    from zoo.registry import get_family

    for family in ("sylber", "hubertopic"):
        encoder = get_family(family).make_config("tiny")["encoder"]
        assert {key: encoder[key] for key in HUBERT_TINY_ENCODER} == HUBERT_TINY_ENCODER, family


def test_train_a_card_fine_tunes_its_weights_or_trains_its_size_from_scratch():
    """`zoo train sylber-tiny` used to set model.init to a card without weights and fail with
    "'sylber-tiny' has no released weights; train it with `zoo train`"."""
    with_weights = load_recipe(None, [], family="sylber-base")["model"]
    assert with_weights["init"] == "sylber-base"
    assert load_recipe(None, [], family="sylber-tiny")["model"]["init"] is None
    without = load_recipe(None, [], family="hubertopic-base")["model"]  # the trainer's default size is tiny
    assert without["init"] is None and without["size"] == "base"
    assert load_recipe(None, ["model.size=tiny"], family="hubertopic-base")["model"] == {**without, "size": "tiny"}
    # a trainer whose default model.init is a card (UniCTokens starts from unictokens-tiny): the named card used
    # to be ignored silently; an explicit model.init still wins
    assert load_recipe(None, [], family="unictokens-shapes")["model"]["init"] == "unictokens-shapes"
    assert load_recipe(None, ["model.init=unictokens-tiny"], family="unictokens-shapes")["model"]["init"] == \
        "unictokens-tiny"
