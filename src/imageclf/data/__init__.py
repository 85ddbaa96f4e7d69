"""The data half: sources, decode/presize, cache, loader, batch augmentation."""
