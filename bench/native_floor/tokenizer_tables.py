"""The bytes a C byte-level BPE tokenizer would hold for an LLM program's tokenizer
(a spike's helper): measured from the program's tokenizer.json, not guessed.

    python bench/native_floor/tokenizer_tables.py PROGRAM.edgeport

Counts the vocab's strings as raw bytes (undoing byte-level BPE's byte-to-character
table) and the merges, then sizes one compact C layout: the strings in one blob with
uint32 offsets, an open-addressing hash (load <= 1/2) from string to id (4-byte slots:
an id, its key compared in the blob) and one from a merge's (left id, right id) to its
rank (12-byte slots). The regex pre-split and the 17 added tokens need no table of note.
"""

from __future__ import annotations

import json
import sys
import zipfile


def byte_of_char() -> dict[str, int]:
    """Byte-level BPE's character -> byte table (GPT-2's bytes_to_unicode, inverted)."""
    printable = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars)}


def slots(n: int) -> int:
    """Slots of a hash table of ``n`` keys at load <= 1/2 (a power of two)."""
    size = 1
    while size < 2 * n:
        size <<= 1
    return size


def main() -> None:
    raw = zipfile.ZipFile(sys.argv[1]).read("llm/tokenizer.json")
    model = json.loads(raw)["model"]
    table = byte_of_char()
    vocab, merges = model["vocab"], model["merges"]
    blob = sum(len(bytes(table.get(ch, 0) for ch in s)) for s in vocab)
    offsets = 4 * (len(vocab) + 1)
    vocab_hash = 4 * slots(len(vocab))
    merge_hash = 12 * slots(len(merges))
    mib = 1 << 20
    print(f"tokenizer.json {len(raw):,} bytes: {model['type']}, vocab {len(vocab):,} strings "
          f"({blob:,} raw bytes), {len(merges):,} merges")
    print(f"C tables: strings {blob / mib:.2f} + offsets {offsets / mib:.2f} + string->id hash "
          f"{vocab_hash / mib:.2f} + merge->rank hash {merge_hash / mib:.2f} = "
          f"{(blob + offsets + vocab_hash + merge_hash) / mib:.2f} MiB")


if __name__ == "__main__":
    main()
