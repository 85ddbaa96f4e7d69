"""Layer 1, core: errors, atomic files, the schema system (settings, records, model.json),
the machine (hardware, disk, processes), plots. Imports nothing else of imageclf."""
