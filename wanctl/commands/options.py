"""Options that several commands share, declared once: `--json`, and the run settings that
`tune` and `generate` let the user pin (None: the plan chooses)."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer


class Backend(str, Enum):
    diffusers = "diffusers"
    wan_repo = "wan-repo"


class DecodeDtype(str, Enum):
    bf16 = "bf16"
    fp32 = "fp32"


class Placement(str, Enum):
    gpu = "gpu"
    cpu = "cpu"


class Dit(str, Enum):
    replicated = "replicated"
    fsdp = "fsdp"


class Task(str, Enum):
    """The official task names of the models wanctl plans."""

    ti2v_5b = "ti2v-5B"
    t2v_a14b = "t2v-A14B"
    i2v_a14b = "i2v-A14B"


class DitStorage(str, Enum):
    bf16 = "bf16"
    fp8 = "fp8"


BackendOption = Annotated[
    Backend,
    typer.Option(help="Who samples: wanctl's diffusers worker, or the official generate.py."),
]
Json = Annotated[bool, typer.Option("--json", help="One JSON document on stdout.")]
Overwrite = Annotated[
    bool,
    typer.Option(
        "--overwrite",
        help="Replace an existing video (and, for generate, latents file) once the new one is "
        "complete; without it an existing file is refused.",
    ),
]
ChunkT = Annotated[int | None, typer.Option(min=1, help="Pin the latent frames per decoder call.")]
DecodeRanks = Annotated[int | None, typer.Option(min=1, help="Pin the ranks that decode.")]
DecodeDtypeOption = Annotated[
    DecodeDtype | None, typer.Option(help="Pin the decode's dtype (the plan's: bf16).")
]
TextEncoder = Annotated[Placement | None, typer.Option(help="Pin where the text encoder runs.")]
Offload = Annotated[
    bool | None,
    typer.Option(
        "--offload/--no-offload",
        help="wan-repo: pin --offload_model (UMT5 and the DiT back to the CPU after use); "
        "diffusers, A14B: the idle expert on the CPU, swapped in at the boundary.",
    ),
]
DitOption = Annotated[
    Dit | None,
    typer.Option(
        help="Pin the DiT whole on each GPU, or sharded over the GPUs (FSDP2; wan-repo: "
        "--dit_fsdp)."
    ),
]
DitStorageOption = Annotated[
    DitStorage | None,
    typer.Option(
        "--dit-storage",
        help="Pin the DiT's weights in bf16, or stored in fp8 and computed in bf16 "
        "(diffusers: half the memory; README: its measured error).",
    ),
]

DitPrecisionOption = Annotated[
    DitStorage | None,
    typer.Option(
        "--dit-precision",
        help="Pin the DiT's linear layers computed in bf16, or in fp8 (diffusers backend, GPUs "
        "of compute capability 8.9+, torchao: faster, weights stored in fp8; README: its "
        "measured error).",
    ),
]
Compile = Annotated[
    bool | None,
    typer.Option(
        "--compile/--no-compile",
        help="Compile the DiT's repeated block (torch.compile, cached across runs); default: "
        "on GPUs.",
    ),
]

CfgParallel = Annotated[
    bool | None,
    typer.Option(
        "--cfg-parallel/--no-cfg-parallel",
        help="Run the two guidance passes on two halves of the GPUs (each Ulysses over its "
        "half; one latent exchanged per step): for PCIe rigs without P2P.",
    ),
]


def option_value(choice: Enum | None) -> str | None:
    """An enum option's value, None when not given."""
    return None if choice is None else str(choice.value)
