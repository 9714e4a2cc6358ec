# Sourced by the *_on_device.sh scripts, from the repository root on the device machine: the
# GPU image lacks some of our dependencies, so the wheels carried in .whl/ are installed into
# /tmp/site (offline) and the project runs from the working tree, not from an install.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHON=python3 PYTHONUNBUFFERED=1
