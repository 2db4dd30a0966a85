"""state_dict()/load_state_dict() of the 8-bit optimizers: exact, in this process and in a fresh one."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from lowbit.optim import Adam8bit, AdamW8bit, SGD8bit

OPTIMIZERS = {
    "adam": (Adam8bit, dict(lr=1e-2, amsgrad=True)),
    "adamw": (AdamW8bit, dict(lr=1e-2)),
    "sgd": (SGD8bit, dict(lr=1e-2, momentum=0.9)),
}


def make(name, seed=0):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(80, 70), torch.nn.ReLU(), torch.nn.Linear(70, 3))
    cls, kw = OPTIMIZERS[name]
    return net, cls(net.parameters(), block_size=1000, **kw)


def train(net, opt, steps, seed=1):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x, y = torch.randn(16, 80, generator=g), torch.randint(0, 3, (16,), generator=g)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()


def assert_same_state(a, b):
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys()
    for pid, state in a["state"].items():
        assert state.keys() == b["state"][pid].keys()
        for key, value in state.items():
            assert value.dtype == b["state"][pid][key].dtype, key
            assert torch.equal(value, b["state"][pid][key]), key


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_round_trip_is_exact_and_training_continues_identically(name):
    net, opt = make(name)
    train(net, opt, 3)
    saved = opt.state_dict()
    assert (
        saved["state"][0]["exp_avg_codes" if name != "sgd" else "momentum_buffer_codes"].dtype == torch.uint8
    )
    twin, twin_opt = make(name, seed=5)
    twin.load_state_dict(net.state_dict())
    twin_opt.load_state_dict(saved)
    assert_same_state(twin_opt.state_dict(), opt.state_dict())
    train(net, opt, 2, seed=7)
    train(twin, twin_opt, 2, seed=7)
    for p, q in zip(net.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q)
    assert_same_state(twin_opt.state_dict(), opt.state_dict())


def test_checkpoint_loads_in_a_fresh_process(tmp_path: Path):
    net, opt = make("adam")
    train(net, opt, 3)
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"model": net.state_dict(), "optim": opt.state_dict()}, ckpt)
    train(net, opt, 2, seed=7)  # what the fresh process must reproduce bit for bit
    script = textwrap.dedent(f"""
        import sys, torch
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_optim_state_dict import make, train
        net, opt = make("adam", seed=9)
        ckpt = torch.load({str(ckpt)!r})
        net.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optim"])
        train(net, opt, 2, seed=7)
        torch.save({{"model": net.state_dict(), "optim": opt.state_dict()}}, {str(tmp_path / "after.pt")!r})
    """)
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "xdg"), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-c", script], check=True, env=env, timeout=120)
    after = torch.load(tmp_path / "after.pt")
    for key, value in net.state_dict().items():
        assert torch.equal(value, after["model"][key]), key
    assert_same_state(after["optim"], opt.state_dict())


def test_a_checkpoint_for_another_shape_is_refused():
    net, opt = make("adam")
    train(net, opt, 1)
    other = torch.nn.Sequential(torch.nn.Linear(80, 60), torch.nn.ReLU(), torch.nn.Linear(60, 3))
    other_opt = Adam8bit(other.parameters(), block_size=1000)
    with pytest.raises(ValueError, match="another model"):
        other_opt.load_state_dict(opt.state_dict())
