"""A checkpoint's DiT loaded straight into where each of its parameters lives: no rank holds
a host copy of a DiT it will put on its GPU, nor a whole DiT it will shard.

The DiT is built from its config with its parameters on the meta device (`empty_dit`: as
diffusers' `from_pretrained` builds it, under accelerate's `init_empty_weights`, so that the
buffers, RoPE's frequency tables, are computed), placed there as the settings say
(`wanctl.models.placement`: fp8 layerwise casting and FSDP2 sharding cost nothing on meta),
then allocated where it lives (`allocate`: the GPU, this rank's FSDP shard of each tensor,
or host memory for the low-noise expert that waits there with `--offload`), and filled one
tensor at a time from the checkpoint's safetensors files (`Weights.load`):

- each tensor is cast as `from_pretrained(torch_dtype=dtype)` would (float32 in the modules
  the model keeps in fp32), then copied into its parameter, which rounds it to the storage
  dtype: the fp8 of layerwise casting is the same rounding of the same bf16 value, so the
  weights equal those of `from_pretrained` followed by the placement, bit for bit;
- an FSDP2 shard (a DTensor) reads only its rows of the tensor, at the offsets torch's own
  state-dict loader slices by (`compute_local_shape_and_global_offset`);
- the file is opened for that tensor alone: its pages are mapped only while it is copied.

Host memory per rank is then the process, plus the pages of the one tensor being read (page
cache mapped into the process: they count in RSS as RssFile, not RssAnon) and, for a tensor
loaded into host memory in fp8, its bf16 cast; the cast to the GPU's dtype is done on the GPU.

Why not the libraries' loaders: diffusers' `from_pretrained(device_map={"": device})` loads
straight to one device, but the DiT as the checkpoint holds it: a bf16 A14B expert (26.6 GiB)
on the GPU before fp8 casting could halve it (more than a 24 GB card holds), and whole on
every rank before FSDP shards it. torch's `set_model_state_dict(full_state_dict=True)`
either scatters each tensor from rank 0 and keeps every new shard until its final
`load_state_dict` (`distribute_tensor`), or, with `broadcast_from_rank0`, sends every tensor
through rank 0 and copies the file's dtype into the storage dtype in one rounding (float32
to fp8 directly: not the weights of `from_pretrained`, which rounds to bf16 first).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wanctl.errors import UsageError
from wanctl.models.configs import (
    Part,
    allocate,
    cast_as_loaded,
    dtensor_type,
    fp32_modules,
    loaded_dtype,
    parts,
)

if TYPE_CHECKING:
    import torch
    from diffusers import WanTransformer3DModel


def empty_dit(config: Mapping[str, Any], dtype: torch.dtype) -> WanTransformer3DModel:
    """The DiT of `config` (a checkpoint's config.json) with its parameters on the meta
    device in the dtypes `from_pretrained(torch_dtype=dtype)` gives them, its buffers
    computed on the CPU."""
    from accelerate import init_empty_weights
    from diffusers import WanTransformer3DModel

    with init_empty_weights():  # include_buffers=False: parameters only
        model: Any = WanTransformer3DModel.from_config(dict(config))
    cast_as_loaded(model.named_parameters(), dtype, fp32_modules(model))
    return model.eval()


@dataclass(frozen=True)
class Weights:
    """A checkpoint model's tensors (a DiT's, a VAE's): the safetensors file holding each
    (`files`, from the checked index of `folder`), the dtype the run loads them in
    (`from_pretrained`'s `torch_dtype`), and the fix a refusal names (the download of
    `folder`)."""

    folder: Path
    files: Mapping[str, Path]
    dtype: torch.dtype
    fix: str

    def load(
        self, model: Any, device: torch.device, each_block: Callable[[Any], None] | None = None
    ) -> Any:
        """`model` (placed, on the meta device) allocated on `device` (FSDP2 shards: this
        rank's part) and filled from the files, tensor by tensor. `each_block`: a transformer
        block at a time, called on each once filled (fp8 compute quantizes it there, so that
        the bf16 weights on the GPU are one block's, not the DiT's)."""
        import torch

        computed = dict(model.named_buffers())  # allocated, every buffer is uninitialised
        keep = fp32_modules(model)
        with torch.no_grad():
            for part in parts(model, each_block is not None):
                allocate(part.module, device, recurse=part.recurse)
                for name, buffer in part.module.named_buffers(recurse=part.recurse):
                    buffer.copy_(computed[part.prefix + name])
                for name, target in _state(part).items():
                    dtype = loaded_dtype(name, self.dtype, keep)
                    self._copy_into(name, target, dtype if target.is_floating_point() else None)
                if part.block and each_block is not None:
                    each_block(part.module)
        return model.eval()

    def _copy_into(self, name: str, target: torch.Tensor, dtype: torch.dtype | None) -> None:
        """Read this rank's part of tensor `name`, cast it to `dtype` (its loaded dtype; None:
        as the parameter is) on the parameter's device, and copy it in."""
        from safetensors import SafetensorError, safe_open

        local, part = _local_part(target)
        file = self.files.get(name)
        if file is None:
            raise UsageError(f"{self.folder} holds no tensor {name}", why=MISMATCH, fix=self.fix)
        try:
            with safe_open(file, framework="pt") as opened:  # maps the file: read, copy, unmap
                whole = opened.get_slice(name)
                shape, value = tuple(whole.get_shape()), whole[part]
                if shape != tuple(target.shape):
                    raise UsageError(
                        f"{file} holds {name} as {list(shape)}, not the {list(target.shape)} of "
                        "the model its config.json describes", why=MISMATCH, fix=self.fix,
                    )  # fmt: skip
                value = value.to(local.device)
                local.copy_(value if dtype in (None, local.dtype) else value.to(dtype))
        except SafetensorError as error:  # a file cut short or damaged since it was checked
            raise UsageError(f"cannot read {name} from {file}", why=str(error),
                             fix=self.fix) from None  # fmt: skip


def _state(part: Part) -> dict[str, torch.Tensor]:
    """The tensors of `part` a checkpoint holds (its state dict), by their names in the model."""
    state = part.module.state_dict(keep_vars=True)
    own = state.items() if part.recurse else ((k, v) for k, v in state.items() if "." not in k)
    return {part.prefix + name: tensor for name, tensor in own}


MISMATCH = "the weights are another model's than its config.json describes, or partly downloaded"


def _local_part(target: torch.Tensor) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """The tensor this rank holds of `target`, and which part of the whole one it is: an FSDP2
    shard (a DTensor) holds its rows, any other tensor all of it."""
    dtensor = dtensor_type()
    if dtensor is None or not isinstance(target, dtensor):
        return target, tuple(slice(None) for _ in target.shape)
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    shard: Any = target  # a DTensor
    shape, offset = compute_local_shape_and_global_offset(
        shard.shape, shard.device_mesh, shard.placements
    )
    local: torch.Tensor = shard.to_local()
    rows = zip(shape, offset, strict=True)
    return local, tuple(slice(start, start + size) for size, start in rows)
