"""`zoo train ... --nproc-per-node 2`: torchrun, 2 CPU processes, gloo, DDP on the toy trainer."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.distributed as dist

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")

PROBE = textwrap.dedent("""
    import os
    import torch
    from zoo.train.toy import ToyTrainer

    class RankProbeTrainer(ToyTrainer):
        \"\"\"The toy trainer, also writing what each rank saw and its final weights.\"\"\"
        seen = []

        def training_step(self, model, batch):
            self.seen.extend(int(i) for i in batch["index"])
            assert isinstance(model, torch.nn.parallel.DistributedDataParallel)
            return super().training_step(model, batch)

        def on_step_end(self, model, step):
            super().on_step_end(model, step)
            if step == self.config["train"]["max_steps"]:
                torch.save({"seen": self.seen, "world_size": torch.distributed.get_world_size(),
                            "backend": torch.distributed.get_backend(),
                            "weights": {k: v.detach().clone() for k, v in model.state_dict().items()}},
                           os.path.join(self.config["train"]["output_dir"], f"rank{self.rank}.pt"))
""")


def test_two_process_ddp_on_cpu(tmp_path):
    (tmp_path / "ddp_probe.py").write_text(PROBE)
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    # 40 items, 2 ranks x batch 4: 5 batches per rank and epoch; 6 steps cross an epoch boundary
    command = [sys.executable, "-m", "zoo.cli", "train", "ddp_probe:RankProbeTrainer", "--nproc-per-node", "2",
               f"train.output_dir={out}", "train.max_steps=6", "train.batch_size=4", "data.train_size=40",
               "train.log_every=2", "train.ckpt_every=3", "train.tensorboard=false", "optim.lr=0.05"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=150, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert [r["world_size"] for r in ranks] == [2, 2] and ranks[0]["backend"] == "gloo"
    for key, value in ranks[0]["weights"].items():
        assert torch.equal(value, ranks[1]["weights"][key]), key  # DDP kept the replicas identical
    # each rank saw its own shard: disjoint within the first epoch, which both covered in full
    first = [set(r["seen"][:20]) for r in ranks]
    assert not first[0] & first[1] and first[0] | first[1] == set(range(40))
    lines = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [2, 4, 6]  # rank 0 alone writes the log
    assert all(line["loss"] > 0 for line in lines) and lines[0]["samples_per_s"] > 0
    assert [p.name for p in sorted((out / "checkpoints").iterdir())] == ["step-00000003"]
    state = torch.load(out / "checkpoints" / "step-00000003" / "state.pt", weights_only=True)
    assert state["world_size"] == 2 and len(state["rng"]) == 2  # every rank's RNG state, for exact resume
    from safetensors.torch import load_file

    saved = load_file(str(out / "final" / "model.safetensors"))
    for key, value in saved.items():
        assert torch.equal(value, ranks[0]["weights"][key])
