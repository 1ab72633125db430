"""The I2V conditioning encoded before the DiTs exist (`wanctl.models.condition`) is the one
the pipeline would have encoded itself: the same latents, and the pipeline's own encode
answered from it."""

from __future__ import annotations

import torch
from PIL import Image

from wanctl.core.families import I2V_A14B
from wanctl.models.builtin import tiny_expert_config, tiny_transformer, tiny_vae
from wanctl.models.condition import encode_first
from wanctl.models.pipelines import build_pipeline, wan_scheduler

HEIGHT, WIDTH, FRAMES = 64, 128, 9


def sample(early: bool) -> tuple[torch.Tensor, int]:
    config = tiny_expert_config(I2V_A14B)
    vae = tiny_vae("tiny-wan2.1")
    image = Image.fromarray(
        torch.randint(0, 256, (HEIGHT, WIDTH, 3), generator=torch.Generator().manual_seed(2))
        .to(torch.uint8)
        .numpy()
    )
    replayed = 0
    if early:
        replay = encode_first(vae, wan_scheduler(I2V_A14B), I2V_A14B, image, height=HEIGHT,
                              width=WIDTH, frames=FRAMES, device=torch.device("cpu"))  # fmt: skip
    pipe = build_pipeline(
        tiny_transformer(config, 0), vae, wan_scheduler(I2V_A14B), family=I2V_A14B, image=True,
        transformer_2=tiny_transformer(config, 1),
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    embeds = 0.1 * torch.randn(2, 1, 512, 32, generator=torch.Generator().manual_seed(3))
    out = pipe(image=image, prompt_embeds=embeds[0], negative_prompt_embeds=embeds[1],
               height=HEIGHT, width=WIDTH, num_frames=FRAMES, num_inference_steps=2,
               generator=torch.Generator().manual_seed(4), output_type="latent").frames  # fmt: skip
    if early:
        replayed = replay.replayed
    return out, replayed


def test_the_early_encode_gives_the_pipelines_latents_and_is_replayed() -> None:
    inline, _ = sample(early=False)
    early, replayed = sample(early=True)
    assert replayed == 1
    assert torch.equal(inline, early)
