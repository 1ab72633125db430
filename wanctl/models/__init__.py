"""The Wan2.2 TI2V-5B model architectures as data, and builders of synthetic models."""
