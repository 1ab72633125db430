"""The Wan2.2 VAE decode: `load` (the VAE), `engine` (exact chunked traversal with an explicit
causal cache), `parallel` (patch parallelism over torch.distributed), `writers` and `stream`
(frames to the file as they come), `fallback` and `job` (`wanctl decode` as a library)."""
