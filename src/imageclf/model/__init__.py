"""Layer 3, model: building and reading models, losses and metrics, interpretation, and
prediction from a model folder. Imports core, data and openset."""
