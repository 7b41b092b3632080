#!/usr/bin/env bash
# Set up napari-pose on a fresh Debian 12 machine with Python 3.11:
# system libraries for Qt/OpenGL under X (and Xvfb for headless use), a virtualenv in .venv,
# CPU PyTorch pinned by constraints.txt, and the plugin with its Qt and test extras.
set -euo pipefail
cd "$(dirname "$0")"

# Debian packages a fresh machine lacks: a virtual X server for headless napari, the xcb
# libraries Qt 6 needs, OpenGL, and tcmalloc (faster torch on CPU).
APT_PACKAGES=(xvfb xauth libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 libxcb-cursor0
  libxcb-randr0 libxcb-render-util0 libxcb-shape0 libxcb-image0 libxkbcommon-x11-0
  libgl1 libegl1 libglx-mesa0 libgl1-mesa-dri libfontconfig1 libdbus-1-3 libtcmalloc-minimal4)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip setuptools
.venv/bin/python -m pip install -q -c constraints.txt -e ".[qt,test]"
echo "napari-pose installed in $(pwd)/.venv"
