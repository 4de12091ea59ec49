#!/bin/sh
# The measurements of bench/README.md's "A native runner's floor": native_floor on the
# three programs, each with an empty weight cache (built), again (reused), then a longer
# generation with and without letting the model's pages go after each call, both with
# the model's page cache dropped first (NATIVE_FLOOR_DROP), then the int8 model read
# from a just-extracted .tflite file instead of the program's entry, without and with.
# Usage: bench/native_floor/run.sh DIR   (DIR holds smol-{fp32,int8-dynamic,int4-weight}.edgeport)
set -e
here=$(cd "$(dirname "$0")" && pwd)
dir=$1
python=${PYTHON:-$here/../../.venv/bin/python}
bin=$here/native_floor
long="6403 1980 253 655 28 281 253 1165 6560 411 260 3426 28 665 4161 354 1573 43663 617"  # "Once upon a time, ... who"
run() {  # label, then native_floor's arguments
  label=$1; shift
  echo "== $label"
  "$bin" "$@" 2>&1 | grep -v '^INFO\|^WARNING'
}
date -u; uptime
mkdir -p "$dir/spec16" "$dir/spec100" "$dir/cache"
for v in fp32 int8-dynamic int4-weight; do
  "$python" "$here/spec.py" "$dir/smol-$v.edgeport" --out "$dir/spec16" --reference 16 | grep greedy
  "$python" "$here/spec.py" "$dir/smol-$v.edgeport" --out "$dir/spec100" --prompt-ids $long --reference 100 | grep greedy
  rm -f "$dir/cache/$v.xnnpack_cache"
  run "$v 16 tokens, cache built" "$dir/spec16/smol-$v.spec" "$dir/cache/$v.xnnpack_cache" 16
  run "$v 16 tokens, cache reused" "$dir/spec16/smol-$v.spec" "$dir/cache/$v.xnnpack_cache" 16
  run "$v 100 tokens" "$dir/spec100/smol-$v.spec" "$dir/cache/$v.xnnpack_cache" 100 "$dir/pages-$v.txt"
  NATIVE_FLOOR_RELEASE=1 run "$v 100 tokens, pages let go after each call" "$dir/spec100/smol-$v.spec" \
    "$dir/cache/$v.xnnpack_cache" 100
  NATIVE_FLOOR_DROP=1 run "$v 16 tokens, model's page cache dropped, MADV_RANDOM" "$dir/spec16/smol-$v.spec" \
    "$dir/cache/$v.xnnpack_cache" 16
  NATIVE_FLOOR_DROP=1 run "$v 100 tokens, model's page cache dropped, MADV_RANDOM" "$dir/spec100/smol-$v.spec" \
    "$dir/cache/$v.xnnpack_cache" 100 "$dir/pages-dropped-$v.txt"
done
# the int8 model from a just-written file (offset 0) instead of the program's zip entry:
# its page cache is in large folios, which a read maps whole
extract() {
  "$python" "$here/spec.py" "$dir/smol-int8-dynamic.edgeport" --out "$dir/extracted" --extract --prompt-ids $long >/dev/null
  sed -i "s|^model .*|model $dir/extracted/smol-int8-dynamic.tflite 0 $(stat -c %s "$dir/extracted/smol-int8-dynamic.tflite")|" \
    "$dir/extracted/smol-int8-dynamic.spec"
}
extract
run "int8-dynamic 100 tokens, just-extracted .tflite" "$dir/extracted/smol-int8-dynamic.spec" \
  "$dir/cache/int8-dynamic.xnnpack_cache" 100 "$dir/pages-extracted.txt"
extract
NATIVE_FLOOR_DROP=1 run "int8-dynamic 100 tokens, just-extracted .tflite, its page cache dropped, MADV_RANDOM" \
  "$dir/extracted/smol-int8-dynamic.spec" "$dir/cache/int8-dynamic.xnnpack_cache" 100 "$dir/pages-extracted-dropped.txt"
date -u; uptime
