"""Layer 2, data: sources and image references, decode and presize, the caches and stores,
the batch sources and the device loader, batch augmentation. Imports core only."""
