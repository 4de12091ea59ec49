"""A call's values reach the inputs they name: keywords by name, dicts by key. Both were
taken in the order written, so `program(y=b, x=a)` computed with a and b swapped."""

from __future__ import annotations

import pytest
import torch

import edgeport
from edgeport.backends.cpu import CpuBackend
from edgeport.input_binding import bind
from edgeport.testing import registry_for


class Sub(torch.nn.Module):
    def forward(self, x, y):
        return x - y


class Nested(torch.nn.Module):
    def forward(self, inp, t):
        return inp["a"] - 2 * inp["b"] + t[0] * t[1]["Q-x"]


@pytest.fixture(scope="module")
def registry():
    return registry_for(CpuBackend())


def test_keywords_bind_by_name_and_a_wrong_name_is_refused(registry):
    x, y = torch.ones(1), torch.full((1,), 10.0)
    program = edgeport.export(Sub(), (x, y), ["cpu"], registry=registry)
    for call in (lambda: program(x, y), lambda: program(y=y, x=x), lambda: program(x, y=y),
                 lambda: program(x.numpy(), y=y.numpy())):
        assert call().tolist() == [-9.0]
    with pytest.raises(edgeport.InputError, match="no input named 'a'.*") as error:
        program(a=x, b=y)
    assert error.value.hint == "its inputs are x, y"
    with pytest.raises(edgeport.InputError, match="'x' is given twice") as error:
        program(y, x=x)
    assert error.value.hint == "give it once; the inputs, in order, are x, y"
    with pytest.raises(edgeport.InputError, match="no input named 'z'"):
        program(x, y, z=y)


def test_a_dict_binds_by_key_in_any_order(registry):
    a, b, x, q = (torch.full((1,), v) for v in (3.0, 1.0, 2.0, 5.0))
    program = edgeport.export(Nested(), ({"b": b, "a": a}, (x, {"Q-x": q})), ["cpu"], registry=registry)
    assert [s.name for s in program.manifest.methods["forward"].inputs] == ["inp_b", "inp_a", "t_0", "t_1_q_x"]
    expected = [3.0 - 2.0 + 10.0]
    assert program({"a": a, "b": b}, (x, {"Q-x": q})).tolist() == expected
    assert program({"b": b, "a": a}, t=(x, {"Q-x": q})).tolist() == expected
    assert program(t=(x, {"Q-x": q}), inp={"a": a, "b": b}).tolist() == expected


def test_names_that_cannot_settle_it_keep_the_order_written():
    """torch tells two inputs apart by a suffix (x, x_1): no name matches, order stands."""
    assert bind([], {"x": 1, "y": 2}, ["x_1", "y"]) == [1, 2]
    assert bind([{"k": 1, "j": 2}], {}, ["inp_j", "inp_k"]) == [2, 1]
    assert bind([{"k": 1, "j": 2}], {}, ["a", "b"]) == [1, 2]
