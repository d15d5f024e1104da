import pytest

from pruning.errors import ConfigError
from pruning.sparsity import parse_sparsity


@pytest.mark.parametrize("value, kind, ratio, n, m, tag", [
    (0.5, "unstructured", 0.5, None, None, "s0.5"),
    ("0.7", "unstructured", 0.7, None, None, "s0.7"),
    ("60%", "unstructured", 0.6, None, None, "s0.6"),
    (0, "dense", 0.0, None, None, "dense"),
    ("2:4", "nm", 0.5, 2, 4, "2of4"),
    (" 4 : 8 ", "nm", 0.5, 4, 8, "4of8"),
    ("1:4", "nm", 0.25, 1, 4, "1of4"),
])
def test_parse(value, kind, ratio, n, m, tag):
    s = parse_sparsity(value)
    assert (s.kind, s.n, s.m, s.tag) == (kind, n, m, tag)
    assert s.ratio == pytest.approx(ratio)


@pytest.mark.parametrize("bad", ["abc", "4:2", "2:2", "0:4", "1.5", -0.1, 1.0, "2:4:8", None, True, [0.5], "nan"])
def test_bad_sparsity_names_value_and_allowed_forms(bad):
    with pytest.raises(ConfigError) as e:
        parse_sparsity(bad)
    assert repr(bad) in str(e.value) and "allowed" in str(e.value)


def test_nm_width_check():
    s = parse_sparsity("4:8")
    s.check_width(64)
    with pytest.raises(ConfigError, match="does not divide the input width 60"):
        s.check_width(60, "fc1")


def test_nm_violations():
    import torch
    from pruning.sparsity import nm_violations
    w = torch.tensor([[0.0, 1.0, 0.0, 2.0, 0.0, 0.0, 3.0, 4.0]])
    assert nm_violations(w, 2, 4) == 0
    w[0, 4] = 5.0
    assert nm_violations(w, 2, 4) == 1
    with pytest.raises(ConfigError, match="M=3 does not divide"):
        nm_violations(w, 1, 3)
