"""The EMA codebook under torch.distributed: ranks with different data keep one codebook (2 CPU processes, gloo)."""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from zoo.models.vector_quantize import VectorQuantize

        torch.manual_seed(0)  # same init everywhere
        vq = VectorQuantize(dim=6, codebook_size=32, codebook_dim=4, smart_re_K=5, threshold_ema_dead_code=2.0,
                            reset_cluster_size=0.5, diversity_weight=1.0, kmeans_iters=3).train()
        torch.manual_seed(100 + rank)  # different data (and different local random draws) per rank
        reactivated = []
        for _ in range(4):
            _, _, loss, logs = vq(torch.randn(3, 5, 6) + rank)
            reactivated.append(logs["n_reactive"])
        torch.save({"buffers": {k: v.clone() for k, v in vq.state_dict().items()}, "reactivated": reactivated},
                   os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_codebook_stays_identical_across_ranks(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert sum(ranks[0]["reactivated"]) > 0  # dead codes were replaced on the way
    assert ranks[0]["reactivated"] == ranks[1]["reactivated"]
    for key, value in ranks[0]["buffers"].items():
        if key in ("count",):  # each rank counts its own codes, as released
            continue
        assert torch.equal(value, ranks[1]["buffers"][key]), key
