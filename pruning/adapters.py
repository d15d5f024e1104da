"""Family adapters: where a model's decoder blocks are and which linears in a block are pruned.

Everything family-specific lives here, so the engine and evaluation stay generic. The prunable
set is *every* ``nn.Linear`` inside a block (the reference scope of SparseGPT and Wanda; the LM
head and embeddings are outside the blocks and stay dense); ``expected`` names the linears a
block of the family must have, so a changed module layout in a new transformers release is an
error instead of a silently unpruned layer (docs/evaluation.md, "Lessons from the reference repositories").
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from pruning.errors import ModelLoadError


@dataclass(frozen=True)
class FamilyAdapter:
    family: str
    model_types: tuple[str, ...]
    blocks_path: str  # attribute path from the *CausalLM model to the block ModuleList
    expected: tuple[str, ...]  # linear names relative to a block, in forward order
    # groups for `true_sequential`: sublayers in one group see the same input
    sequential_groups: tuple[tuple[str, ...], ...]
    # (target, source): the target linear's forward is bypassed by the model (its weight is used
    # directly), and its input is the first `in_features` outputs of the source linear.
    input_taps: tuple[tuple[str, str], ...] = ()

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        obj = model
        for part in self.blocks_path.split("."):
            if not hasattr(obj, part):
                raise ModelLoadError(f"{self.family} adapter: {type(model).__name__} has no `{self.blocks_path}`")
            obj = getattr(obj, part)
        return obj

    def prunable(self, block: nn.Module) -> dict[str, nn.Linear]:
        """Every ``nn.Linear`` of the block, by qualified name; checks the expected ones are there."""
        found = {name: m for name, m in block.named_modules() if isinstance(m, nn.Linear)}
        missing = [n for n in self.expected if n not in found]
        if missing:
            raise ModelLoadError(
                f"{self.family} adapter: block {type(block).__name__} lacks the linears {missing}; found "
                f"{sorted(found)}. The model's module layout differs from what the adapter expects"
            )
        return found


_LLAMA_LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                  "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
_LLAMA_GROUPS = (("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), ("self_attn.o_proj",),
                 ("mlp.gate_proj", "mlp.up_proj"), ("mlp.down_proj",))

ADAPTERS: tuple[FamilyAdapter, ...] = (
    FamilyAdapter(
        family="llama",  # Llama 1/2/3, SmolLM2, Mistral, Qwen2: same block layout
        model_types=("llama", "mistral", "qwen2"),
        blocks_path="model.layers",
        expected=_LLAMA_LINEARS,
        sequential_groups=_LLAMA_GROUPS,
    ),
    FamilyAdapter(
        family="gemma3",
        model_types=("gemma3_text",),
        blocks_path="model.layers",
        expected=_LLAMA_LINEARS,
        sequential_groups=_LLAMA_GROUPS,
    ),
    FamilyAdapter(
        family="opt",
        model_types=("opt",),
        blocks_path="model.decoder.layers",
        expected=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "fc1", "fc2"),
        sequential_groups=(("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), ("self_attn.out_proj",),
                           ("fc1",), ("fc2",)),
    ),
    FamilyAdapter(
        family="mamba",  # every nn.Linear of the mixer; conv1d, A_log and D stay dense (docs/methods.md (APT))
        model_types=("mamba",),
        blocks_path="backbone.layers",
        expected=("mixer.in_proj", "mixer.x_proj", "mixer.dt_proj", "mixer.out_proj"),
        sequential_groups=(("mixer.in_proj",), ("mixer.x_proj",), ("mixer.dt_proj",), ("mixer.out_proj",)),
        # transformers computes `dt_proj.weight @ time_step` without calling dt_proj (its bias goes
        # into the scan), where time_step = x_proj(x)[..., :time_step_rank].
        input_taps=(("mixer.dt_proj", "mixer.x_proj"),),
    ),
)

SUPPORTED_MODEL_TYPES = tuple(t for a in ADAPTERS for t in a.model_types)


def adapter_for_type(model_type: str | None, what: str = "") -> FamilyAdapter:
    """The adapter of a config's ``model_type`` (``what``: the model's class, for the error)."""
    for adapter in ADAPTERS:
        if model_type in adapter.model_types:
            return adapter
    raise ModelLoadError(
        f"unsupported architecture {model_type!r}{f' ({what})' if what else ''}; supported model types: "
        f"{', '.join(SUPPORTED_MODEL_TYPES)}. Add a FamilyAdapter in pruning/adapters.py to support it"
    )


def adapter_for(model: nn.Module) -> FamilyAdapter:
    return adapter_for_type(getattr(getattr(model, "config", None), "model_type", None), type(model).__name__)


def prunable_linears(model: nn.Module, adapter: FamilyAdapter) -> dict[str, nn.Linear]:
    """All prunable linears of the model, by their qualified name in the model."""
    out = {}
    for i, block in enumerate(adapter.blocks(model)):
        for name, module in adapter.prunable(block).items():
            out[f"{adapter.blocks_path}.{i}.{name}"] = module
    return out
