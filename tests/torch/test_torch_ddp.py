"""DistributedDataParallel (gloo, 2 CPU processes) training of a clustered model keeps the ranks in step."""

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from weightzip.torch import cluster_weights, clustered_weights

WORLD_SIZE = 2
CLUSTERS = 4


def _train_on_rank(rank: int, store_path: str, result_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=WORLD_SIZE)
    try:
        torch.manual_seed(rank)  # different initial weights per rank: DDP must broadcast rank 0's state
        model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
        with torch.no_grad():
            model[0].weight[:, :2] = 0.0
        cluster_weights(model, CLUSTERS, per_channel=True, preserve_sparsity=True, gradient_aggregation="mean")
        ddp = DistributedDataParallel(model)
        initial = {name: p.centroids.detach().clone() for name, p in clustered_weights(model).items()}
        optimizer = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
        generator = torch.Generator().manual_seed(100 + rank)  # each rank sees its own data
        for _ in range(4):
            x = torch.randn(16, 8, generator=generator)
            y = torch.randint(0, 3, (16,), generator=generator)
            optimizer.zero_grad()
            nn.functional.cross_entropy(ddp(x), y).backward()
            optimizer.step()
        state = {name: p.centroids.detach().clone() for name, p in clustered_weights(model).items()}
        state["initial"] = initial
        state["weights"] = [model[0].weight.detach().clone(), model[2].weight.detach().clone()]
        torch.save(state, f"{result_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ddp_ranks_end_with_identical_centroids_and_k_values(tmp_path):
    mp.spawn(_train_on_rank, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(WORLD_SIZE)]
    for name in ("0.weight", "2.weight"):
        torch.testing.assert_close(ranks[0][name], ranks[1][name], rtol=0, atol=0)
        assert not torch.equal(ranks[0][name], ranks[0]["initial"][name])  # the centroids did train
    for first, second in zip(ranks[0]["weights"], ranks[1]["weights"]):
        assert torch.equal(first, second)
        assert max(torch.unique(row).numel() for row in first) <= CLUSTERS
    assert torch.all(ranks[0]["weights"][0][:, :2] == 0)  # sparsity preserved through DDP training
