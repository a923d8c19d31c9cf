"""The operator rule for uploaded graphs (worker/engine/operators.py), op by op."""

from __future__ import annotations

import operator

import pytest
import torch

from worker.engine.operators import operator_refusal, serialized_target_refusal, target_refusal

aten = torch.ops.aten

REFUSED = {
    aten.from_file.default: "takes a file name",
    aten._local_scalar_dense.default: "reads tensor values back into Python",
    aten.item.default: "reads tensor values back into Python",
    aten.rand.default: "draws random numbers",
    aten.bernoulli.p: "draws random numbers",
    aten.native_dropout.default: "draws random numbers",
    aten.randn.generator: "draws random numbers",
    aten.set_.source_Storage: "re-points a tensor",
    aten.resize_.default: "re-points a tensor",
    aten.add.out: "writes into its argument(s) out",
    aten.copy_.default: None,  # the in-place form of `copy`: checked per node
    aten._print.default: "returns nothing",
    aten.record_stream.default: "writes into its argument(s) self",
    aten.bernoulli_.float: "draws random numbers",
    aten.exponential_.default: "draws random numbers",
}
ALLOWED = [
    aten.conv2d.default,
    aten.linear.default,
    aten.batch_norm.default,
    aten.relu_.default,
    aten.add_.Tensor,
    aten.fill_.Scalar,
    aten.dropout.default,
    aten.layer_norm.default,
    aten.scaled_dot_product_attention.default,
    aten.view.default,
    aten.sym_size.int,
    aten._assert_scalar.default,
    aten.upsample_nearest2d.vec,
    aten.max_pool2d.default,
    aten.gelu.default,
    aten.silu.default,
    aten.conv1d.padding,
]


@pytest.mark.parametrize("op", list(REFUSED), ids=str)
def test_refused_operators_say_why(op: torch._ops.OpOverload) -> None:
    expected = REFUSED[op]
    reason = operator_refusal(op)
    if expected is None:
        assert reason is None
    else:
        assert reason is not None and expected in reason, reason
        assert op._schema.name in reason


@pytest.mark.parametrize("op", ALLOWED, ids=str)
def test_pure_aten_operators_are_allowed(op: torch._ops.OpOverload) -> None:
    assert operator_refusal(op) is None


def test_non_aten_targets() -> None:
    assert target_refusal(operator.getitem) is None
    assert target_refusal(operator.add) is None
    assert target_refusal(print) is not None
    assert target_refusal(torch.ops.higher_order.cond) is not None
    for text in (
        "torch.os.system",
        "builtins.exec",
        "torch.ops.aten.from_file.default",
        "torch.ops.aten.nope.default",
        "#custom_op",
        "torch._C._set_grad_enabled",
        "_operator.__import__",
    ):
        assert serialized_target_refusal(text) is not None, text
    for text in (
        "torch.ops.aten.add.Tensor",
        "_operator.getitem",
        "torch.sym_max",
        "math.trunc",
        "torch.ops.higher_order.wrap_with_set_grad_enabled",
    ):
        assert serialized_target_refusal(text) is None, text
