"""Layer 1, core: errors, atomic files, settings and records, the model's metadata, the
machine (hardware, disk, processes). Imports nothing else of imageclf."""
