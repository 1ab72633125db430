"""The Wan VAE decode (Wan2.2's and Wan2.1's): `load` (the VAE), `latents` (the file format),
`engine` (exact chunked traversal with an explicit causal cache), `fused` (its norm kernel),
`parallel` (patch parallelism over torch.distributed), `writers` and `stream` (frames to the
file as they come), `fallback` and `run` (`wanctl decode` as a library)."""
