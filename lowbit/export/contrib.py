"""onnxruntime's com.microsoft contrib ops as onnxscript ops (onnx itself has no schema for them)."""

from __future__ import annotations


def contrib_op(name: str, inputs: list[tuple[str, str]], outputs: list[tuple[str, str]],
               types: dict[str, list[str]], int_attributes: tuple[str, ...]):
    """An onnxscript Op for the contrib op `name`: (name, type variable) inputs and outputs, the allowed tensor
    types of each type variable, and the op's integer attributes."""
    import onnx
    from onnxscript.values import Op, Opset

    param, attr = onnx.defs.OpSchema.FormalParameter, onnx.defs.OpSchema.Attribute
    schema = onnx.defs.OpSchema(
        name, "com.microsoft", 1,
        inputs=[param(n, t) for n, t in inputs],
        outputs=[param(n, t) for n, t in outputs],
        type_constraints=[(t, allowed, "") for t, allowed in types.items()],
        attributes=[attr(a, onnx.defs.OpSchema.AttrType.INT, "") for a in int_attributes],
    )
    return Op(Opset("com.microsoft", 1), name, schema)
