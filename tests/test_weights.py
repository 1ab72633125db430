"""A checkpoint's DiT streamed into where it lives (`wanctl.models.weights`): the same weights
and buffers as diffusers' `from_pretrained` followed by the placement, bit for bit (bf16 and
fp8 storage; sharded and single-file checkpoints); FSDP2 over two real gloo processes, each
rank holding its rows and the forward that of the whole DiT; the low-noise expert of
`--offload` loaded into host memory; a damaged checkpoint refused with its fix.

This file is also the torchrun worker of its FSDP test (`python -m test_weights FOLDER OUT`
with tests/ on the path).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from conftest import run_test_workers
from fake_checkpoints import diffusers_checkpoint, model_index

from wanctl.core.families import T2V_A14B, TI2V_5B, Family
from wanctl.errors import UsageError
from wanctl.models.builtin import tiny_expert_config, tiny_transformer
from wanctl.models.checkpoint import DiffusersCheckpoint
from wanctl.models.placement import FP8, prepare_dit

CPU = torch.device("cpu")
SHARD = "diffusion_pytorch_model-00002-of-00026.safetensors"


def tiny_checkpoint(folder: Path, family: Family = TI2V_5B, *, sharded: bool = True) -> Path:
    """model_index.json and the tiny DiT(s) saved in float32 (26 shards and an index, or one
    file), as the Wan-AI checkpoints hold theirs; nothing else is read here."""
    (folder / "model_index.json").parent.mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps(model_index(family)))
    config = tiny_expert_config(family) if family.experts == 2 else None
    for expert, name in enumerate(("transformer", "transformer_2")[: family.experts]):
        size = "100KB" if sharded else "1GB"
        tiny_transformer(config, expert).save_pretrained(folder / name, max_shard_size=size)
    return folder


def from_pretrained(folder: Path, dtype: torch.dtype, storage: str) -> Any:
    """The weights as diffusers loads them, then stored as `storage` says."""
    from diffusers import WanTransformer3DModel

    model = WanTransformer3DModel.from_pretrained(folder, torch_dtype=dtype)
    return prepare_dit(model, storage=storage, shard=False, device=CPU, compute=dtype)


def streamed(
    folder: Path,
    dtype: torch.dtype,
    storage: str,
    *,
    shard: bool = False,
    each_block: Callable[[Any], None] | None = None,
) -> Any:
    checkpoint = DiffusersCheckpoint(folder, dtype)
    dit = checkpoint.transformer(torch.device(checkpoint.staging))
    placed = dict(storage=storage, shard=shard, device=CPU, compute=dtype, each_block=each_block)
    return prepare_dit(dit, weights=checkpoint.dit_weights(0), **placed)


class BlockRecorder:
    """`each_block` of a load: records, as each block is handed over, that its tensors are
    filled and that every later block is still on the meta device (one block at a time)."""

    def __init__(self) -> None:
        self.seen: list[Any] = []
        self.dit: Any = None

    def __call__(self, block: Any) -> None:
        assert not any(t.is_meta for t in block.parameters())
        later = self.dit.blocks[len(self.seen) + 1 :]
        assert all(t.is_meta for t in later.parameters())
        self.seen.append(block)


def tensors(model: Any) -> dict[str, torch.Tensor]:
    """Parameters and buffers (RoPE's tables), fp8 as its bytes (no fp8 equality on the CPU)."""
    named = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    return {name: t.view(torch.uint8) if t.dtype == FP8 else t for name, t in named.items()}


def assert_identical(mine: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> None:
    assert mine.keys() == theirs.keys()
    for name, tensor in mine.items():
        assert tensor.dtype == theirs[name].dtype, name
        assert torch.equal(tensor, theirs[name]), name


@pytest.mark.parametrize(("storage", "sharded"), [("bf16", True), ("fp8", False)])
def test_the_streamed_dit_is_from_pretrained_s_bit_for_bit(
    tmp_path: Path, storage: str, sharded: bool
) -> None:
    """bf16 as on a GPU, over a float32 checkpoint: fp8 weights are the bf16 values rounded
    (2% of them would differ rounded from float32 at once), the norms and modulation kept in
    float32, the RoPE tables computed."""
    folder = tiny_checkpoint(tmp_path / "ckpt", sharded=sharded)
    mine = streamed(folder, torch.bfloat16, storage)
    theirs = from_pretrained(folder / "transformer", torch.bfloat16, storage)
    assert_identical(tensors(mine), tensors(theirs))
    dtypes = {t.dtype for t in mine.parameters()}
    assert dtypes == ({FP8} if storage == "fp8" else set()) | {torch.bfloat16, torch.float32}
    assert mine.rope.freqs_cos.abs().max() == 1.0  # cos(0) of the first position


def test_a_block_at_a_time_load_hands_each_block_over_filled_and_loads_the_same_weights(
    tmp_path: Path,
) -> None:
    """fp8 compute's load (`each_block`: torchao quantizes each block there): blocks filled
    one by one, each handed over before the next is allocated, the weights and RoPE tables
    those of the whole load."""
    folder = tiny_checkpoint(tmp_path / "ckpt")
    recorder = BlockRecorder()
    checkpoint = DiffusersCheckpoint(folder, torch.bfloat16)
    recorder.dit = checkpoint.transformer(torch.device(checkpoint.staging))
    mine = prepare_dit(recorder.dit, storage="bf16", shard=False, device=CPU,
                       compute=torch.bfloat16, weights=checkpoint.dit_weights(0),
                       each_block=recorder)  # fmt: skip
    assert recorder.seen == list(mine.blocks)
    assert_identical(tensors(mine), tensors(streamed(folder, torch.bfloat16, "bf16")))


def test_a_random_dit_placed_a_block_at_a_time_has_the_values_placed_at_once() -> None:
    """The built-in synthetic DiTs (random values drawn in `named_parameters` order) are the
    same DiT with fp8 compute's load as without: blockwise fill draws in the same order."""
    from wanctl.models.builtin import TINY_DIT
    from wanctl.models.configs import place
    from wanctl.models.weights import empty_dit

    recorder = BlockRecorder()
    whole, recorder.dit = (empty_dit(TINY_DIT, torch.float32) for _ in range(2))
    torch.manual_seed(4)
    place(whole, CPU)
    torch.manual_seed(4)
    place(recorder.dit, CPU, each_block=recorder)
    assert len(recorder.seen) == len(whole.blocks)
    assert_identical(tensors(recorder.dit), tensors(whole))


def test_the_waiting_expert_is_loaded_into_host_memory(tmp_path: Path) -> None:
    """--offload: the low-noise expert streamed into host memory while the high-noise one goes
    to the run's device (the meta device stands in for a GPU here), both from their files."""
    from wanctl.workers.dits import load_dits

    folder = tiny_checkpoint(tmp_path / "ckpt", T2V_A14B)
    run_on = torch.device("meta")
    args = argparse.Namespace(dit_storage="fp8", dit="replicated", offload=True,
                              cfg_parallel=False, dit_precision="bf16",
                              no_compile=True)  # fmt: skip
    with one_rank(tmp_path):
        (high, low), swap, _ = load_dits(DiffusersCheckpoint(folder, torch.float32), run_on, args,
                                      torch.zeros(1))  # fmt: skip
    assert swap is not None and {p.device for p in high.parameters()} == {run_on}
    assert_identical(tensors(low), tensors(from_pretrained(folder / "transformer_2",
                                                           torch.float32, "fp8")))  # fmt: skip


@contextmanager
def one_rank(folder: Path) -> Iterator[None]:
    """A gloo group of this process alone (load_dits asks the world size)."""
    store = dist.FileStore(str(folder / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_fsdp_ranks_hold_their_rows_and_compute_the_whole_dit(tmp_path: Path) -> None:
    folder = tiny_checkpoint(tmp_path / "ckpt")
    run_test_workers(
        "test_weights", [str(folder), str(tmp_path)], 2, timeout_s=240, OMP_NUM_THREADS="1"
    )
    assert sorted(p.name for p in tmp_path.glob("rank*")) == ["rank0", "rank1"]


def fsdp_worker(folder: Path, out: Path) -> None:
    """Each rank: its rows of every tensor (FSDP2's even split of dim 0, the last rank's
    short or empty) equal those of the whole weights; the sharded forward equals the whole
    DiT's; for both storages."""
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    try:
        for storage in ("bf16", "fp8"):
            sharded = streamed(folder, torch.float32, storage, shard=True)
            whole = from_pretrained(folder / "transformer", torch.float32, storage)
            theirs = tensors(whole)
            for name, parameter in sharded.named_parameters():
                rows = -(-parameter.shape[0] // world)
                mine = parameter.to_local()
                expected = theirs[name][rank * rows : (rank + 1) * rows]
                assert torch.equal(mine.view(torch.uint8) if mine.dtype == FP8 else mine,
                                   expected), name  # fmt: skip
            torch.testing.assert_close(forward(sharded), forward(whole), rtol=0, atol=1e-6)
        (out / f"rank{rank}").touch()
    finally:
        dist.destroy_process_group()


def forward(dit: Any) -> torch.Tensor:
    generator = torch.Generator().manual_seed(3)
    batch = {
        "hidden_states": torch.randn(1, 48, 2, 8, 8, generator=generator),
        "timestep": torch.tensor([500.0]),
        "encoder_hidden_states": torch.randn(1, 8, 32, generator=generator),
    }
    with torch.no_grad():
        out: torch.Tensor = dit(**batch, return_dict=False)[0]
    return out


@pytest.mark.parametrize(
    ("damage", "message", "fix"),
    [
        ("cut", "is cut short", f"delete {{folder}}/transformer/{SHARD}, then download it"),
        ("unlink", f"transformer/{SHARD} is missing", "download it: `hf download"),
    ],
)
def test_a_shard_damaged_since_the_launch_is_refused_with_its_download(
    tmp_path: Path, damage: str, message: str, fix: str
) -> None:
    folder = tiny_checkpoint(tmp_path / "ckpt")
    path = folder / "transformer" / SHARD
    if damage == "cut":
        path.write_bytes(path.read_bytes()[:100])
    else:
        path.unlink()
    with pytest.raises(UsageError) as refused:
        streamed(folder, torch.float32, "bf16")
    error = refused.value
    assert message in error.message and error.why
    assert fix.format(folder=folder) in error.fix and "Wan2.2-TI2V-5B-Diffusers" in error.fix


def test_a_tensor_the_index_misplaces_is_refused_not_a_traceback(tmp_path: Path) -> None:
    folder = tiny_checkpoint(tmp_path / "ckpt")
    index = folder / "transformer" / "diffusion_pytorch_model.safetensors.index.json"
    content = json.loads(index.read_text())
    name, shard = next(iter(content["weight_map"].items()))
    content["weight_map"][name] = next(s for s in content["weight_map"].values() if s != shard)
    index.write_text(json.dumps(content))
    with pytest.raises(UsageError) as refused:
        streamed(folder, torch.float32, "bf16")
    assert refused.value.message.startswith(f"cannot read {name} from ")
    assert "hf download" in refused.value.fix


def test_another_model_s_weights_are_refused_with_the_download(tmp_path: Path) -> None:
    """The placeholder shards of `fake_checkpoints` hold none of the tensors the tiny DiT's
    config makes."""
    folder = diffusers_checkpoint(tmp_path / "Wan2.2-TI2V-5B-Diffusers")
    (folder / "transformer" / "config.json").write_text(json.dumps(tiny_config()))
    with pytest.raises(UsageError) as refused:
        streamed(folder, torch.float32, "bf16")
    assert "holds no tensor" in refused.value.message
    assert "another model's" in refused.value.why


def tiny_config() -> dict[str, Any]:
    from wanctl.models.builtin import TINY_DIT

    return {"_class_name": "WanTransformer3DModel", **TINY_DIT}


if __name__ == "__main__":
    fsdp_worker(Path(sys.argv[1]), Path(sys.argv[2]))
