#!/usr/bin/env bash
# What `callme bench-quality` needs beyond the test setup: espeak-ng (the speech), and a Python
# environment in target/quality-venv with numpy, scipy and the pesq package (ITU-T P.862, built
# from PyPI's source with the machine's C compiler).
set -euo pipefail
cd "$(dirname "$0")/../.."
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
if ! command -v espeak-ng >/dev/null; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends espeak-ng >/dev/null
fi
venv=target/quality-venv
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import numpy, scipy, pesq' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q 'numpy<3' 'scipy<2' cython
  "$venv/bin/pip" install -q --no-build-isolation 'pesq==0.0.4'
fi
echo "$venv/bin/python"
