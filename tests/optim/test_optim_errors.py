"""Bad input to the 8-bit optimizers gets a clear error."""

import pytest
import torch

from lowbit.optim import Adam8bit, AdamW8bit, SGD8bit

ALL = [Adam8bit, AdamW8bit, lambda params, **kw: SGD8bit(params, momentum=0.9, **kw)]
IDS = ["adam", "adamw", "sgd"]


@pytest.mark.parametrize("make", ALL, ids=IDS)
def test_sparse_gradients_are_refused(make):
    emb = torch.nn.Embedding(10, 4, sparse=True)
    opt = make(emb.parameters())
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse gradients"):
        opt.step()


@pytest.mark.parametrize("make", ALL, ids=IDS)
def test_complex_parameters_are_refused(make):
    with pytest.raises(ValueError, match="complex parameters.*view_as_real"):
        make([torch.nn.Parameter(torch.randn(3, dtype=torch.complex64))])


@pytest.mark.parametrize("make", ALL, ids=IDS)
@pytest.mark.parametrize("block_size", [0, -2048, 2048.0, "2048", None, True])
def test_block_size_must_be_a_positive_integer(make, block_size):
    with pytest.raises(ValueError, match="block_size must be an integer >= 1"):
        make([torch.nn.Parameter(torch.randn(3))], block_size=block_size)


def test_a_param_group_with_a_bad_block_size_is_refused():
    opt = Adam8bit([torch.nn.Parameter(torch.randn(3))])
    with pytest.raises(ValueError, match="block_size must be an integer >= 1, not 0"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.randn(3))], "block_size": 0})


@pytest.mark.parametrize("switch", ["fused", "capturable", "differentiable"])
def test_unsupported_execution_switches(switch):
    with pytest.raises(ValueError, match=f"does not support {switch}=True"):
        Adam8bit([torch.nn.Parameter(torch.randn(3))], **{switch: True})


def test_hyperparameters_are_checked_as_torch_does():
    p = [torch.nn.Parameter(torch.randn(3))]
    with pytest.raises(ValueError, match="Invalid learning rate"):
        Adam8bit(p, lr=-1.0)
    with pytest.raises(ValueError, match="Invalid beta parameter at index 1"):
        Adam8bit(p, betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="Nesterov momentum requires"):
        SGD8bit(p, nesterov=True)
    with pytest.raises(ValueError, match="always decouples"):
        AdamW8bit(p, decoupled_weight_decay=False)


@pytest.mark.parametrize("make", ALL, ids=IDS)
def test_a_nan_gradient_in_an_8bit_state_is_reported_before_any_change(make):
    p = torch.nn.Parameter(torch.randn(64, 128))
    before = p.detach().clone()
    opt = make([p])
    p.grad = torch.randn_like(p)
    p.grad[3, 5] = float("inf")
    with pytest.raises(ValueError, match="NaN or Inf"):
        opt.step()
    assert torch.equal(p, before)
    p.grad = torch.randn_like(p)
    opt.step()  # the optimizer is still usable
    assert torch.isfinite(p).all() and not torch.equal(p, before)
