"""Layer 4, learn: the training loop, its callbacks and schedules, the lr finder, EMA,
checkpoints. Imports core, data, openset and model."""
