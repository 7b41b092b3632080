"""Data model, skeletons, file formats and video access (no Qt, no napari, no torch)."""
