"""PyTorch models, training, inference and metrics (no Qt, no napari)."""

from napari_pose.runtime import use_passive_openmp

use_passive_openmp()  # before any module here imports torch: OpenMP reads it when it loads
