#!/usr/bin/env bash
# Set up the benchmark-only environment of bench/bench_ffcv.py: FFCV 1.0.2 (built from
# source), litdata, WebDataset and daskimg (editable) in a venv of their own.
#
#     bash bench/setup_ffcv.sh          # ~5 min the first time, seconds afterwards
#     DASKIMG_FFCV_VENV=/some/where bash bench/setup_ffcv.sh
#
# Never part of the test suite or CI: FFCV is a benchmark-only dependency. Idempotent:
# re-running installs only what is missing. Needs root (apt-get) and access to PyPI and
# Debian's packages. Pins, and why:
#
# * torch==2.13.0: the CPU wheel this machine keeps on disk (pip's find-links); a plain
#   "torch" requirement would pull a multi-GB CUDA build. Installed first, so that FFCV's
#   and litdata's "torch" requirements are already satisfied.
# * ffcv==1.0.2 with --no-build-isolation (as its README says): its setup.py (no pyproject)
#   asks the pkg-config binary for opencv4 and libturbojpeg and compiles one C++ extension
#   against Debian's libopencv-dev 4.6 and libturbojpeg; no numpy headers are involved.
# * opencv-python-headless: FFCV's install_requires names opencv-python (the GUI build);
#   the headless wheel provides the same "cv2" module without X11 libraries.
# * numpy is NOT pinned: ffcv 1.0.2 builds (its extension uses no numpy headers) and runs
#   with numpy 2.4 and numba 0.68 (checked: raw and JPEG .beton round trips).
# * torchvision is removed after litdata is installed: litdata names it as a requirement,
#   but PyPI's torchvision cannot load beside the local CPU torch wheel ("operator
#   torchvision::nms does not exist"); litdata imports it only to serialize PIL/tensor
#   images, and the benchmark stores numpy arrays. (pip check then reports it missing.)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
VENV="${DASKIMG_FFCV_VENV:-/tmp/daskimg-bench/venv-ffcv}"
PYTHON="${PYTHON:-python3.11}"

log() { printf '[setup_ffcv] %s\n' "$*" >&2; }

# --- system packages -----------------------------------------------------------------
APT_PKGS=(pkg-config libturbojpeg0-dev libopencv-dev)
missing=()
for p in "${APT_PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    log "apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# --- the venv --------------------------------------------------------------------------
if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating $VENV"
    mkdir -p "$(dirname "$VENV")"
    "$PYTHON" -m venv "$VENV"
fi
# the machine's pip config lists local indexes; pip warns for each package they lack
pip_install() {
    "$VENV/bin/python" -m pip install --quiet "$@" 2> >(grep -v "is ignored: it is neither" >&2)
}

# (ffcv.__version__ still says 0.0.3rc1 in the 1.0.2 release: ask the package metadata)
if "$VENV/bin/python" -c "
import importlib.metadata as m, ffcv, litdata, webdataset, psutil, daskimg, torch
assert m.version('ffcv') == '1.0.2' and torch.__version__.startswith('2.13.0')
" 2>/dev/null; then
    # daskimg is an editable install: nothing to do when the repository moves on
    log "already set up: $VENV"
    exit 0
fi

log "pip: torch (CPU wheel from disk), FFCV build deps"
pip_install --upgrade pip setuptools wheel
pip_install "torch==2.13.0"
pip_install numba opencv-python-headless cython terminaltables \
    pytorch_pfn_extras fastargs assertpy pkgconfig

log "pip: ffcv==1.0.2 (built from source, no build isolation)"
# opencv-python (a dependency named by ffcv's setup.py) would add a second cv2 with GUI libs:
# install ffcv without dependencies and its run-time dependencies explicitly
pip_install --no-build-isolation --no-deps "ffcv==1.0.2"
pip_install tqdm psutil

log "pip: litdata, webdataset, daskimg (editable)"
pip_install "torch==2.13.0" litdata webdataset psutil
pip_install "torch==2.13.0" -e "$REPO"
if "$VENV/bin/python" -m pip show -q torchvision 2>/dev/null; then
    log "removing torchvision (pulled in by litdata; cannot load beside the CPU torch wheel)"
    "$VENV/bin/python" -m pip uninstall -y -q torchvision
fi

"$VENV/bin/python" - <<'EOF'
import importlib.metadata as m
import ffcv, litdata, numba, numpy, torch, webdataset, daskimg
print("[setup_ffcv] ok: ffcv", m.version("ffcv"), "| numba", numba.__version__, "| litdata", litdata.__version__,
      "| webdataset", m.version("webdataset"), "| numpy", numpy.__version__,
      "| torch", torch.__version__, "| daskimg", daskimg.__version__)
EOF
log "done: run the benchmark with $VENV/bin/python bench/bench_ffcv.py"
