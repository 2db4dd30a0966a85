"""Small helpers over fx nodes and the attributes they read."""

from __future__ import annotations

import torch
from torch import fx


def attr_path(node: fx.Node) -> str:
    return str(node.target)


def attr_uses(gm: fx.GraphModule) -> dict[str, int]:
    """Attribute path -> how many nodes read it (a weight read by one layer only may be rewritten in place)."""
    uses: dict[str, int] = {}
    for n in gm.graph.nodes:
        if n.op == "get_attr":
            uses[str(n.target)] = uses.get(str(n.target), 0) + len(n.users)
    return uses


def get_attr_tensor(gm: fx.GraphModule, node: fx.Node) -> torch.Tensor:
    owner, _, name = attr_path(node).rpartition(".")
    return getattr(gm.get_submodule(owner) if owner else gm, name)


def set_attr_tensor(gm: fx.GraphModule, path: str, value: torch.Tensor) -> None:
    """Set (or create) the parameter at dotted `path`, keeping it a Parameter without gradient."""
    owner_path, _, name = path.rpartition(".")
    owner = gm
    for part in owner_path.split(".") if owner_path else []:
        if not hasattr(owner, part):
            owner.add_module(part, torch.nn.Module())
        owner = getattr(owner, part)
    if name in owner._parameters or not hasattr(owner, name):
        owner._parameters.pop(name, None)
        owner.register_parameter(name, torch.nn.Parameter(value, requires_grad=False))
    else:
        setattr(owner, name, value)


def module_name(node: fx.Node, strip: str = "") -> tuple[str, str | None]:
    """(qualified name, class name) of the innermost nn.Module that produced `node`."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return node.name, None
    fqn, cls = list(stack.values())[-1]
    cls_name = cls.rsplit(".", 1)[-1] if isinstance(cls, str) else getattr(cls, "__name__", None)
    return fqn, cls_name
