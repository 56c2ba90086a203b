"""Training engine: trainer, checkpoints, metrics, prediction."""
