#!/bin/sh
# Build native_floor with Debian's gcc against the ai-edge-litert wheel's libLiteRt.so
# (found by path; the binary keeps it as its rpath). Usage: bench/native_floor/build.sh [VENV]
set -e
here=$(dirname "$0")
venv=${1:-$here/../../.venv}
lib=$(cd "$venv"/lib/python3*/site-packages/ai_edge_litert && pwd)
gcc -O2 -Wall -Wextra -o "$here/native_floor" "$here/native_floor.c" -L"$lib" -l:libLiteRt.so -Wl,-rpath,"$lib"
echo "built $here/native_floor against $lib/libLiteRt.so"
