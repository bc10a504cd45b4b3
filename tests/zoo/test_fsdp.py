"""train.distributed=fsdp: FSDP2 per transformer layer in 2 CPU processes (gloo) on a tiny transformers causal LM.

One FSDP run (activation checkpointing, gradient accumulation, clipping) is SIGKILLed at the end of step 6 and
resumed from its sharded (DCP) step-3 checkpoint; it must repeat steps 4-5 exactly and follow the single-process run of
the same global batches to float32 rounding.
"""
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.distributed as dist

import zoo
from zoo.errors import ConfigError
from zoo.train import load_checkpoint, load_recipe, run
from zoo.train.fsdp import default_layer_classes, mixed_precision_policy, resolve_layer_classes
from zoo.train.toy_lm import TINY, ToyCausalLM

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")

PROBE = textwrap.dedent("""
    import os
    import signal

    from zoo.train.toy_lm import ToyLMTrainer

    class KillOnceTrainer(ToyLMTrainer):
        \"\"\"The toy LM trainer; rank 0 SIGKILLs itself once at the end of step ZOO_TEST_KILL_AT.\"\"\"

        def on_step_end(self, model, step):
            super().on_step_end(model, step)
            kill = int(os.environ.get("ZOO_TEST_KILL_AT", "0"))
            marker = os.path.join(self.config["train"]["output_dir"], "killed")
            if kill and step == kill and self.rank == 0 and not os.path.exists(marker):
                open(marker, "w").close()
                os.kill(os.getpid(), signal.SIGKILL)  # no cleanup: like a lost machine
""")
COMMON = ["train.max_steps=8", "train.grad_accum=2", "train.clip_grad_norm=0.5", "train.log_every=1",
          "train.ckpt_every=3", "train.keep_last=0", "train.tensorboard=false", "train.progress=false",
          "optim.lr=0.01"]
TOL = dict(rel=1e-5, abs=1e-6)


def _launch(tmp, out, *overrides, kill_at=0, wait=True):
    """`zoo train --nproc-per-node 2` with FSDP; the finished process, or (``wait=False``) a started one."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "ZOO_TEST_KILL_AT": str(kill_at)}
    command = [sys.executable, "-m", "zoo.cli", "train", "probe:KillOnceTrainer", "--nproc-per-node", "2",
               f"train.output_dir={out}", "train.distributed=fsdp", "train.batch_size=4", *COMMON, *overrides]
    if not wait:
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp)
    return subprocess.run(command, capture_output=True, text=True, timeout=240, env=env, cwd=tmp)


def _finish(process, timeout=240):
    """(returncode, stdout + stderr, stderr) of a started launch; killed if it overruns ``timeout``."""
    try:
        out, err = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode, out + err, err


def _log(out):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fsdp")
    (tmp / "probe.py").write_text(PROBE)
    out = tmp / "fsdp"
    # Independent runs overlap: the crash run and the bf16 run (test_fsdp_bf16_...) train in their own
    # processes while the single-process reference trains in this one.
    crash = _launch(tmp, out, "train.fsdp.activation_checkpointing=true", kill_at=6, wait=False)
    bf16 = _launch(tmp, tmp / "bf16", "train.fsdp.mixed_precision=bf16", "train.max_steps=2", "train.ckpt_every=0",
                   wait=False)
    try:
        sys.path.insert(0, str(tmp))
        try:  # the same global batches (8 = 2 ranks x 4) in one process, no FSDP
            single = tmp / "single"
            run(load_recipe(None, ["trainer=probe:KillOnceTrainer", f"train.output_dir={single}",
                                   "train.batch_size=8", *COMMON]))
        finally:
            sys.path.remove(str(tmp))
        code, output, _ = _finish(crash)
        assert code != 0 and (out / "killed").exists(), output
        before = _log(out)
        resumed = _launch(tmp, out, "train.fsdp.activation_checkpointing=true")
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        bf16_result = _finish(bf16)
    finally:
        for process in (crash, bf16):
            if process.poll() is None:
                process.kill()
                process.wait()
    return {"tmp": tmp, "out": out, "before_kill": before, "after": _log(out), "single": _log(single),
            "single_dir": single, "stderr": resumed.stderr, "bf16": bf16_result}


def test_fsdp_follows_the_single_process_loss_curve(fsdp_run):
    fsdp, single = fsdp_run["after"], fsdp_run["single"]
    assert [r["step"] for r in fsdp] == list(range(1, 9)) == [r["step"] for r in single]
    for a, b in zip(fsdp, single):
        assert a["loss"] == pytest.approx(b["loss"], **TOL) and a["grad_norm"] == pytest.approx(b["grad_norm"], **TOL)
    assert fsdp[-1]["loss"] < 0.8 * fsdp[0]["loss"]
    assert "FSDP2: 2 layer units (LlamaDecoderLayer) + root" in fsdp_run["stderr"]
    assert "activation checkpointing on" in fsdp_run["stderr"]
    # the final folder is the zoo format with the full weights (gathered on rank 0)
    ours = zoo.load(str(fsdp_run["out"] / "final"))
    theirs = zoo.load(str(fsdp_run["single_dir"] / "final"))
    for key, value in theirs.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[key], value, rtol=1e-4, atol=1e-5)  # 8 Adam steps


def test_fsdp_checkpoints_are_sharded_and_resume_exactly_after_sigkill(fsdp_run):
    out, before, after = fsdp_run["out"], fsdp_run["before_kill"], fsdp_run["after"]
    # killed at the end of step 6: after its optimizer step, before its log line and its checkpoint
    assert [r["step"] for r in before] == [1, 2, 3, 4, 5]
    for step in (3, 6):  # each rank wrote its own shard through torch.distributed.checkpoint
        folder = out / "checkpoints" / f"step-{step:08d}"
        assert sorted(p.name for p in (folder / "dcp").iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
        state = load_checkpoint(folder)
        assert state["sharded"] == "dcp" and "model" not in state and len(state["rng"]) == 2
    # resumed from step 3: steps 4 and 5 are computed again, bit for bit
    assert [(r["step"], r["loss"], r["grad_norm"]) for r in after[:5]] == \
        [(r["step"], r["loss"], r["grad_norm"]) for r in before]


def test_a_sharded_checkpoint_resumes_in_one_process(fsdp_run, tmp_path):
    """DCP reshards on load: the 2-process step-6 checkpoint continues in a single process."""
    out = tmp_path / "one"
    out.mkdir()
    shutil.copytree(fsdp_run["out"] / "checkpoints" / "step-00000006", out / "checkpoints" / "step-00000006")
    shutil.copy(fsdp_run["out"] / "log.jsonl", out / "log.jsonl")
    record = json.loads((fsdp_run["out"] / "run.json").read_text())
    (out / "run.json").write_text(json.dumps({**record, "status": "running", "step": 6}))
    sys.path.insert(0, str(fsdp_run["tmp"]))
    try:
        run(load_recipe(None, ["trainer=probe:KillOnceTrainer", f"train.output_dir={out}", "train.batch_size=8",
                               *COMMON]))
    finally:
        sys.path.remove(str(fsdp_run["tmp"]))
    lines = _log(out)
    assert [r["step"] for r in lines] == list(range(1, 9))
    for a, b in zip(lines[6:], fsdp_run["after"][6:]):
        assert a["loss"] == pytest.approx(b["loss"], **TOL)


def test_fsdp_bf16_mixed_precision_runs_on_cpu(fsdp_run):
    """bf16 parameters for compute, float32 sharded parameters and float32 gradient reduction: runs on gloo."""
    out = fsdp_run["tmp"] / "bf16"
    code, output, err = fsdp_run["bf16"]  # launched by the fixture, alongside the other runs
    assert code == 0, output
    assert "mixed precision bf16" in err
    for ours, reference in zip(_log(out), fsdp_run["single"][:2]):
        assert ours["loss"] == pytest.approx(reference["loss"], rel=1e-2)  # bf16 rounding, not float32's
        assert ours["loss"] != reference["loss"]
    model = zoo.load(str(out / "final"))
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_layer_classes_default_config_and_hook():
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    model = ToyCausalLM(dict(TINY))
    assert default_layer_classes(model) == [LlamaDecoderLayer]  # transformers' _no_split_modules
    assert resolve_layer_classes(model, {"layer_classes": ["LlamaMLP"]})[0].__name__ == "LlamaMLP"
    with pytest.raises(ConfigError, match=r"names \['Block'\].*LlamaDecoderLayer"):
        resolve_layer_classes(model, {"layer_classes": ["Block"]})

    class Hooked:
        def fsdp_layer_classes(self, model):
            return [torch.nn.Linear]

    assert resolve_layer_classes(model, {"layer_classes": None}, Hooked()) == [torch.nn.Linear]

    class Plain(torch.nn.Module):  # no transformers model inside: the children of a ModuleList
        def __init__(self):
            super().__init__()
            self.blocks = torch.nn.ModuleList([torch.nn.Sequential(torch.nn.Linear(2, 2)) for _ in range(3)])

    assert default_layer_classes(Plain()) == [torch.nn.Sequential]


def test_mixed_precision_policy_from_config():
    assert mixed_precision_policy({"mixed_precision": None}) is None
    policy = mixed_precision_policy({"mixed_precision": "bf16", "reduce_dtype": "fp32"})
    assert policy.param_dtype == torch.bfloat16 and policy.reduce_dtype == torch.float32
    with pytest.raises(ConfigError, match="mixed_precision must be null or bf16"):
        mixed_precision_policy({"mixed_precision": "fp8"})
    with pytest.raises(ConfigError, match="Unknown config key 'train.fsdp.mixed'"):
        load_recipe(None, ["trainer=zoo.train.toy_lm:ToyLMTrainer", "train.fsdp.mixed=bf16"])
