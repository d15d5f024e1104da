"""The 2:4 speed-up experiment: its CPU path says it needs CUDA; its pruning and shapes are right."""

import subprocess
import sys

import pytest
import torch

from experiments.sparse_speedup import SHAPES, MLPStack, gpu_problem, main, prune_2of4_
from pruning.sparsity import nm_violations
from tests.conftest import REPO


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU message is for machines without CUDA")
def test_without_a_gpu_it_says_so_and_exits_2(tmp_path):
    out = subprocess.run([sys.executable, "-m", "experiments.sparse_speedup", "--out", str(tmp_path / "s.json")],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "no CUDA GPU is visible" in out.stderr and "nothing was measured" in out.stderr
    assert not (tmp_path / "s.json").exists() and gpu_problem() == "no CUDA GPU is visible"


@pytest.mark.parametrize("argv, match", [(["--shapes", "gpt5"], "unknown ['gpt5']"), (["--batch", "0"], "--batch=0")])
def test_bad_arguments_are_named(argv, match, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and match in capsys.readouterr().err


def test_every_linear_is_pruned_to_a_valid_2_of_4_pattern():
    model = MLPStack(width=64, layers=2)
    assert prune_2of4_(model) == 4
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            assert nm_violations(m.weight, 2, 4) == 0 and float((m.weight == 0).float().mean()) == 0.5


def test_the_real_model_shapes_are_valid_configs():
    from transformers import AutoConfig

    for name, arch in SHAPES.items():
        if arch is not None:
            arch = dict(arch)
            config = AutoConfig.for_model(arch.pop("model_type"), **arch)
            assert config.hidden_size % 64 == 0 and config.intermediate_size % 64 == 0, name
