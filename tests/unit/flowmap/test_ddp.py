"""Data-parallel training: 2 gloo processes on loopback give the single-process gradient of the same
global batch (JVP losses included), and `train` under torchrun-style env writes one checkpoint."""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from flowmap import distributed, losses
from flowmap.checkpoint import load_model
from flowmap.nets import build_net
from flowmap.timesamplers import TimeSampler

METHODS = ("esd", "lsd", "psd")  # JVP (Eulerian, Lagrangian) and EMA-target losses
ARCH = {"name": "mlp", "shape": [2], "width": 32, "depth": 2, "num_classes": 0}
GLOBAL_BATCH, WORLD = 64, 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def setup_env(rank: int, world: int, port: int) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        OMP_NUM_THREADS="1",
    )
    torch.set_num_threads(1)


def make(method: str):
    torch.manual_seed(0)
    net = build_net(ARCH)
    loss = losses.make_loss(method, time=TimeSampler("uniform", diagonal=0.25), label_dropout=0.0)
    return net, loss, {"ema": copy.deepcopy(net)} if "ema" in losses.uses(loss) else {}


def global_batch() -> torch.Tensor:
    return torch.randn(GLOBAL_BATCH, 2, generator=torch.Generator().manual_seed(1))


def shard_loss(net, loss, extras, rank: int) -> torch.Tensor:
    """Rank r's mean loss on its half of the global batch, with rank r's noise and times."""
    half = GLOBAL_BATCH // WORLD
    torch.manual_seed(100 + rank)
    return loss(net, global_batch()[rank * half : (rank + 1) * half], None, **extras).mean()


def grad_worker(rank: int, port: int, out: str) -> None:
    setup_env(rank, WORLD, port)
    ctx = distributed.setup()
    grads = {}
    for method in METHODS:
        net, loss, extras = make(method)
        shard_loss(net, loss, extras, ctx.rank).backward()
        distributed.average_gradients(net, ctx)
        grads |= {f"{method}.{k}": p.grad.clone() for k, p in net.named_parameters()}
    torch.save(grads, Path(out) / f"grads{rank}.pt")
    distributed.teardown(ctx)


def test_two_process_gradients_equal_single_process_on_the_same_global_batch(tmp_path):
    mp.start_processes(grad_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, start_method="spawn")
    ranks = [torch.load(tmp_path / f"grads{r}.pt") for r in range(WORLD)]
    for method in METHODS:
        net, loss, extras = make(method)
        (sum(shard_loss(net, loss, extras, r) for r in range(WORLD)) / WORLD).backward()
        for k, p in net.named_parameters():
            for r in range(WORLD):
                torch.testing.assert_close(ranks[r][f"{method}.{k}"], p.grad, rtol=1e-5, atol=1e-7)
    assert not dist.is_initialized()


TRAIN_STEPS = 6


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1) for t in tensors]).clone()


def train_worker(rank: int, port: int, out: str) -> None:
    """`train` on this rank, recording what the process group gave it and what it did: the context
    from setup, each step's local and averaged gradients, the final weights, the checkpoints it wrote."""
    from flowmap import train as train_mod
    from flowmap.train import TrainConfig, train

    setup_env(rank, WORLD, port)
    rec, tensors = {"saved_at": []}, {}
    setup, average, ema_update = distributed.setup, distributed.average_gradients, train_mod.ema_update
    save_checkpoint = train_mod.save_checkpoint

    def recording_setup():
        ctx = setup()
        rec.update(rank=ctx.rank, world=ctx.world, group_world=dist.get_world_size() if ctx.enabled else 1)
        return ctx

    def recording_average(module, ctx):
        step = sum(k.startswith("local.") for k in tensors)
        tensors[f"local.{step}"] = flat(p.grad for p in module.parameters())
        average(module, ctx)
        tensors[f"averaged.{step}"] = flat(p.grad for p in module.parameters())

    def recording_ema_update(ema, net, decay):
        ema_update(ema, net, decay)
        tensors["net"], tensors["ema"] = flat(net.parameters()), flat(ema.parameters())

    def recording_save(path, net, config):
        rec["saved_at"].append(config["train"]["steps"])
        return save_checkpoint(path, net, config)

    distributed.setup, distributed.average_gradients = recording_setup, recording_average
    train_mod.ema_update, train_mod.save_checkpoint = recording_ema_update, recording_save
    cfg = TrainConfig(
        data="gmm8",
        method="esd",
        steps=TRAIN_STEPS,
        width=32,
        depth=1,
        batch_size=64,
        ckpt_every=3,
        out=str(Path(out) / "ddp.safetensors"),
    )
    train(cfg, progress=False)
    rec["initialized_after"] = dist.is_initialized()
    save_file(tensors, Path(out) / f"rank{rank}.safetensors")
    (Path(out) / f"rank{rank}.json").write_text(json.dumps(rec))


def test_train_under_two_processes_writes_one_checkpoint_from_rank_zero(tmp_path):
    mp.start_processes(train_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, start_method="spawn")
    recs = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    runs = [load_file(tmp_path / f"rank{r}.safetensors") for r in range(WORLD)]
    # each process joined one group of WORLD: ranks and size as the process group reports them
    assert [(r["rank"], r["world"], r["group_world"]) for r in recs] == [(0, WORLD, WORLD), (1, WORLD, WORLD)]
    assert not any(r["initialized_after"] for r in recs)
    assert [r["saved_at"] for r in recs] == [[3, TRAIN_STEPS], []]  # ckpt_every=3, rank 0 only
    for step in range(TRAIN_STEPS):
        local = [run[f"local.{step}"] for run in runs]
        assert not torch.allclose(local[0], local[1]), step  # each rank saw its own data and noise
        mean = (local[0] + local[1]) / WORLD  # the average computed here, from both ranks' own gradients
        for run in runs:
            torch.testing.assert_close(run[f"averaged.{step}"], mean, rtol=1e-6, atol=1e-8)
    assert f"local.{TRAIN_STEPS}" not in runs[0]
    # so both ranks stepped alike and end with the same weights, and rank 0 wrote its EMA weights
    torch.testing.assert_close(runs[0]["net"], runs[1]["net"], rtol=0, atol=0)
    torch.testing.assert_close(runs[0]["ema"], runs[1]["ema"], rtol=0, atol=0)
    model = load_model(str(tmp_path / "ddp.safetensors"))
    torch.testing.assert_close(flat(model.net.parameters()), runs[0]["ema"], rtol=0, atol=0)
    assert model.config["train"]["steps"] == TRAIN_STEPS
    assert model.config["train"]["processes"] == WORLD  # so its "seconds" reads as wall time on WORLD ranks
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("rank")) == [
        "ddp.json",
        "ddp.safetensors",
        "ddp.state.safetensors",
    ]


def test_local_batch_must_split_evenly():
    ctx = distributed.DistContext(rank=0, world=3)
    assert distributed.local_batch(96, ctx) == 32
    try:
        distributed.local_batch(64, ctx)
    except ValueError as e:
        assert "does not split over 3" in str(e)
    else:
        raise AssertionError("64 over 3 ranks must be refused")
    assert distributed.rank_seed(0, distributed.DistContext(1, 2)) != distributed.rank_seed(0, ctx)


def test_torchrun_cli_smoke(tmp_path):
    out = tmp_path / "cli.safetensors"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(free_port()),
        "-m",
        "flowmap",
        "train",
        "--data",
        "gmm8",
        "--method",
        "psd",
        "--steps",
        "4",
        "--width",
        "32",
        "--depth",
        "1",
        "--batch-size",
        "32",
        "--out",
        str(out),
        "--no-progress",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "wrote" in res.stdout
    assert load_model(str(out)).config["train"]["steps"] == 4
