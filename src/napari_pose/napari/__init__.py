"""The napari adapter: readers, writers, sample data, layer conversion and dock widgets."""
