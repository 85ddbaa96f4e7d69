"""Layer 5, run: a run directory's format, building and training a run, finishing it (model
folder, plots, report), TensorBoard. Imports every layer below."""
