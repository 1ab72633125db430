"""The networks of a Wan2.2 run (TI2V-5B's by default, or an A14B model's), and builders of
synthetic copies: the real architectures with random weights (memory does not depend on the
values), on a given device and dtype, or on the meta device (to count parameters, or to set a
model up before `place` allocates it).

torch, diffusers and transformers are imported inside the builders: `wanctl tune` plans
from the parameter counts recorded in `wanctl.tune.predict` without importing them.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from wanctl.core.architectures import DIT_TI2V_5B, UMT5_XXL, VAE_TI2V_5B
from wanctl.core.families import TI2V_5B, Family

if TYPE_CHECKING:
    import torch
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import UMT5EncoderModel


def build_dit(
    device: torch.device | str,
    dtype: torch.dtype,
    *,
    num_layers: int | None = None,
    config: dict[str, Any] | None = None,
) -> WanTransformer3DModel:
    """A DiT of `config` (TI2V-5B's by default; an A14B expert's) with random weights
    (`num_layers` fewer for a quick trace)."""
    from diffusers import WanTransformer3DModel

    config = {**(config or DIT_TI2V_5B), **({"num_layers": num_layers} if num_layers else {})}
    return _materialise(lambda: WanTransformer3DModel(**config), device, dtype, keep_fp32=True)


def build_text_encoder(
    device: torch.device | str, dtype: torch.dtype, *, num_layers: int | None = None
) -> UMT5EncoderModel:
    """UMT5-XXL's encoder with random weights."""
    from transformers import UMT5Config, UMT5EncoderModel

    config = UMT5Config(**{**UMT5_XXL, **({"num_layers": num_layers} if num_layers else {})})
    encoder: UMT5EncoderModel = _materialise(lambda: UMT5EncoderModel(config), device, dtype)
    return encoder


def build_vae_decoder(
    device: torch.device | str, dtype: torch.dtype, config: dict[str, Any] | None = None
) -> AutoencoderKLWan:
    """A VAE of `config` (TI2V-5B's by default) without its encoder (decoding never uses it),
    random weights."""
    from diffusers import AutoencoderKLWan

    def decoder_only() -> AutoencoderKLWan:
        vae: Any = AutoencoderKLWan(**(config or VAE_TI2V_5B))
        vae.encoder = None
        vae.quant_conv = None
        return vae

    return _materialise(decoder_only, device, dtype)


def _materialise(
    make: Any, device: torch.device | str, dtype: torch.dtype, *, keep_fp32: bool = False
) -> Any:
    """Build on the meta device and cast there (free), then `place` it on `device`. With
    `keep_fp32`, the modules a diffusers model names in `_keep_in_fp32_modules` stay in fp32,
    as its `from_pretrained` leaves them (transformers does so only for fp16)."""
    import torch

    with torch.device("meta"):
        model = make()
    keep = fp32_modules(model) if keep_fp32 else ()
    cast_as_loaded([*model.named_parameters(), *model.named_buffers()], dtype, keep)
    return model.eval() if torch.device(device).type == "meta" else place(model, device)


def fp32_modules(model: Any) -> tuple[str, ...]:
    """The modules a diffusers model keeps in float32 whatever the dtype it is loaded in
    (`_keep_in_fp32_modules`; the Wan DiT's RoPE, time embedder, norms and modulation)."""
    return tuple(getattr(model, "_keep_in_fp32_modules", None) or ())


def loaded_dtype(name: str, dtype: torch.dtype, keep: tuple[str, ...]) -> torch.dtype:
    """The dtype diffusers' `from_pretrained(torch_dtype=dtype)` gives the floating tensor
    `name`: float32 when a component of its name is one of the modules kept in fp32, as
    `load_model_dict_into_meta` decides, else `dtype`."""
    import torch

    return torch.float32 if any(part in keep for part in name.split(".")) else dtype


def cast_as_loaded(
    named: Iterable[tuple[str, torch.Tensor]], dtype: torch.dtype, keep: tuple[str, ...]
) -> None:
    """Cast each floating tensor of `named` (on the meta device: free) to its loaded dtype."""
    for name, tensor in named:
        if tensor.is_floating_point():
            tensor.data = tensor.data.to(loaded_dtype(name, dtype, keep))


def allocate(model: Any, device: torch.device | str, *, recurse: bool = True) -> Any:
    """`model.to_empty(device=device, recurse=recurse)` without its cost on a first call:
    `empty_like` of a meta tensor runs through `torch._refs`, whose first use imports sympy
    and the symbolic shapes (about 2 s of a cold `wanctl decode` that imports no diffusers).
    Plain tensors are allocated by shape; a DTensor (an FSDP2 shard) keeps `empty_like`, which
    knows its placements; none exists unless its module was imported."""
    import torch

    dtensor = dtensor_type()

    def empty(tensor: torch.Tensor) -> torch.Tensor:
        if dtensor is not None and isinstance(tensor, dtensor):
            return torch.empty_like(tensor, device=device)
        return torch.empty(tensor.shape, dtype=tensor.dtype, device=device)

    return model._apply(empty, recurse=recurse)


def dtensor_type() -> type | None:
    """torch's DTensor class if it was imported (importing it costs about 2 s cold)."""
    module = sys.modules.get("torch.distributed.tensor")
    return getattr(module, "DTensor", None)


@dataclass(frozen=True)
class Part:
    """A piece of a model allocated and filled at once: `module` (its tensors' names start
    with `prefix`), with its children or not (`recurse`), and whether it is a transformer
    block (`block`)."""

    prefix: str
    module: Any
    recurse: bool = True
    block: bool = False

    def parameters(self) -> list[tuple[str, torch.Tensor]]:
        return [(self.prefix + n, t) for n, t in self.module.named_parameters(recurse=self.recurse)]


def parts(model: Any, blockwise: bool) -> list[Part]:
    """The pieces `model` is allocated in: all of it, or (`blockwise`) its own tensors, then
    each child in order, a child ModuleList `blocks` (the transformer blocks) a block at a
    time, so that each block can be changed (quantized to fp8) before the next is allocated.
    The parameters come in the order of `named_parameters` either way."""
    if not blockwise:
        return [Part("", model)]
    found = [Part("", model, recurse=False)]
    for name, child in model.named_children():
        if name == "blocks":
            found += [Part(f"blocks.{i}.", block, block=True) for i, block in enumerate(child)]
        else:
            found.append(Part(f"{name}.", child))
    return found


def place(
    model: Any,
    device: torch.device | str,
    fill_on: torch.device | None = None,
    each_block: Callable[[Any], None] | None = None,
) -> Any:
    """Allocate a meta-device model straight on `device` and fill it there: no fp32 CPU copy
    of billions of parameters. Small uniform values keep activations finite; norm scales are
    one. A parameter two modules share (UMT5's embedding table, 1.96 GiB) is allocated once:
    `to_empty` would give each module a table of its own (seen on the GPU: the text encode's
    peak held both), so the second reference is dropped first and restored after.
    `fill_on`: draw the values there and copy them in, one tensor at a time (a GPU fills a
    host-resident expert in seconds, the CPU in minutes). `each_block`: allocate and fill a
    transformer block at a time and call it on each as it is filled (the same values)."""
    import torch

    shared = _drop_shared(model)
    with torch.no_grad():
        for part in parts(model, each_block is not None):
            allocate(part.module, device, recurse=part.recurse)
            for name, tensor in part.parameters():
                _fill(name, tensor, fill_on)
            if part.block and each_block is not None:
                each_block(part.module)
        for name, tensor in model.named_buffers():
            _fill(name, tensor, fill_on)
    for module, name, owner, owner_name in shared:
        setattr(module, name, getattr(owner, owner_name))
    return model.eval()


def _fill(name: str, tensor: torch.Tensor, fill_on: torch.device | None) -> None:
    import torch

    if tensor.dim() <= 1 and ("norm" in name or name.endswith("gamma")):
        tensor.fill_(1.0)
    elif tensor.is_floating_point() and (fill_on or tensor.dtype.itemsize == 1):
        # fp8 has no uniform_: drawn in bf16, rounded by the copy
        drawn = torch.empty_like(tensor, dtype=torch.bfloat16, device=fill_on)
        tensor.copy_(drawn.uniform_(-0.02, 0.02))
    elif tensor.is_floating_point():
        tensor.uniform_(-0.02, 0.02)
    else:
        tensor.zero_()


def _drop_shared(model: Any) -> list[tuple[Any, str, Any, str]]:
    """Remove every second reference to a parameter, returning (module, name, owner, owner's
    name) to restore it."""
    first: dict[int, tuple[Any, str]] = {}
    dropped = []
    for module in model.modules():
        for name, parameter in list(module._parameters.items()):
            if parameter is None:
                continue
            if id(parameter) in first:
                dropped.append((module, name, *first[id(parameter)]))
                module._parameters[name] = None
            else:
                first[id(parameter)] = (module, name)
    return dropped


def parameter_counts(family: Family = TI2V_5B) -> dict[str, int]:
    """Parameters of each network of `family` (a DiT: one expert), counted on the meta device
    (no memory, about a second)."""
    import torch
    from diffusers import AutoencoderKLWan

    dit: Any = build_dit("meta", torch.bfloat16, config=family.dit)
    with torch.device("meta"):
        vae = AutoencoderKLWan(**family.vae.config)
    return {
        "dit": _count(dit),
        "dit_fp32": sum(p.numel() for p in dit.parameters() if p.dtype == torch.float32),
        "dit_fp8": fp8_stored(dit),
        "dit_block": _count(dit.blocks[0]),
        "text_encoder": _count(build_text_encoder("meta", torch.bfloat16)),
        "vae_decoder": _count(build_vae_decoder("meta", torch.bfloat16, family.vae.config)),
        "vae": _count(vae),
    }


def fp8_stored(dit: Any) -> int:
    """Parameters diffusers' layerwise casting stores in fp8 (on a meta-device `dit`, which
    it casts)."""
    import torch

    dit.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.bfloat16)
    return sum(p.numel() for p in dit.parameters() if p.dtype == torch.float8_e4m3fn)


def _count(module: Any) -> int:
    return sum(p.numel() for p in module.parameters())
