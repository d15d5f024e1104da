"""Hydra entry point: ``python -m experiments.run [overrides]`` (``--help`` lists the options).

Thin on purpose: it registers the config resolvers and hands the composed config and the job's
output directory to :func:`pruning.pipeline.run_job`.
"""

from __future__ import annotations

import re

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from pruning.errors import ConfigError
from pruning.sparsity import parse_sparsity


def run_tag(method: str, sparsity, calibration: str) -> str:
    """Directory name of a job from its choices: ``dense``, ``wanda_s0.5_c4``, ``apt_2of4_c4``."""
    if method == "dense":
        return "dense"
    try:
        tag = parse_sparsity(sparsity).tag
    except ConfigError:  # let the job itself report the bad value, with the allowed forms
        tag = "invalid-" + re.sub(r"[^A-Za-z0-9.]+", "-", str(sparsity))
    return f"{method}_{tag}_{calibration}"


def override_suffix(override_dirname: str) -> str:
    """Extra overrides (not already in the path) as a last path component, file-system safe."""
    if not override_dirname:
        return ""
    return "/" + re.sub(r"[^A-Za-z0-9.,=_+-]+", "-", override_dirname)


OmegaConf.register_new_resolver("run_tag", run_tag, replace=True)
OmegaConf.register_new_resolver("override_suffix", override_suffix, replace=True)


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from pruning.pipeline import run_job

    run_job(cfg, HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()
