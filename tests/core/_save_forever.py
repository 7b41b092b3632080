"""Save a labels file over and over until killed; the victim of ``test_autosave``'s crash test.

Usage: ``python _save_forever.py SOURCE.slp TARGET.slp``

Loads SOURCE eagerly, then forever: moves the x coordinate of node 0 of the first instance of
the first labelled frame by +1, saves to TARGET with ``save_labels``, and prints the iteration
number (flushed) once the save has returned. So after a kill, TARGET must hold exactly SOURCE
with that point moved by the last printed number, or by one more if the kill came after the
file was replaced but before the number was printed.
"""

from __future__ import annotations

import sys

from napari_pose.core.io import load_labels, save_labels


def main(source: str, target: str) -> None:
    """Run until killed; every save changes the file so that each is told apart."""
    labels = load_labels(source, lazy=False)
    point = labels.labeled_frames[0].instances[0].points["xy"]
    iteration = 0
    while True:
        iteration += 1
        point[0, 0] += 1
        save_labels(labels, target)
        print(iteration, flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:3])
