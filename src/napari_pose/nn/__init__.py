"""PyTorch models, training, inference and metrics (no Qt, no napari)."""
