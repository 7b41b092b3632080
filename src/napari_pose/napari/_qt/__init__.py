"""The Qt side of the napari adapter: one dock widget per module, and the plots they draw.

Docks are thin: they gather the user's choices, call the Qt-free adapter (``napari_pose.napari``)
and ``core``/``nn`` functions, start workers and show results. A dock never imports another dock
(``tests/napari/test_layering.py`` checks): what two docks share lives in the adapter.
"""
