"""Benchmarks of optax_lr: speed, robustness, the papers experiments."""
