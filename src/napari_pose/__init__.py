"""napari-pose: SLEAP-style multi-animal pose estimation inside napari.

The package has three layers, each importing only those below it:

- ``napari_pose.core``: data model (sleap-io ``Labels``), file formats, video and stack access.
  No Qt, napari or torch.
- ``napari_pose.nn``: PyTorch models, training and inference. No Qt or napari.
- ``napari_pose.napari``: readers, writers, sample data, layer conversion and dock widgets.
"""

__version__ = "0.1.0"
