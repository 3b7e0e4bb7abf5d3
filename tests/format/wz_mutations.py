"""Structural mutations of valid .wz files with every checksum re-sealed (forged CRCs).

A byte flip is caught by the CRCs; these mutations are not: they edit the header JSON (records,
section descriptors, metadata, top-level fields) and the payload's sections, then recompute every
section CRC-32, the header CRC and the whole-file CRC, so that the file reaches the reader's structural
checks and the stream decoders. Used by ``tests/format/test_wz_fuzz.py`` (a bounded run) and
``benchmarks/fuzz_wz.py`` (>= 100,000 cases).

    mutant = mutate(random.Random(seed), valid_file_bytes)
"""

from __future__ import annotations

import copy
import random
import zlib

from weightzip.format.container import assemble, disassemble

INTERESTING_INTS = (0, 1, 2, 3, 7, 8, 15, 16, 17, 24, 25, 31, 32, 33, 63, 64, 255, 256, 65535, 65536,
                    1 << 24, (1 << 28) + 1, (1 << 31) - 1, 1 << 31, 1 << 32, 1 << 40, (1 << 62) - 1, 1 << 62,
                    1 << 63, 1 << 64, 10 ** 30, -1, -2, -(1 << 31), -(1 << 63))
INTERESTING_STRINGS = ("packed", "huffman", "ans", "dense", "sparse", "clustered", "array", "float16",
                       "float32", "float64", "uint8", "uint64", "int64", "bool", "bfloat16", "complex128",
                       "object", "", "[/]", "\x1b[31m", "a" * 300)


def random_value(rng: random.Random, depth: int = 0):
    """A random JSON value, biased to the values that break parsers (boundaries, wrong types)."""
    roll = rng.random()
    if roll < 0.45:
        return rng.choice(INTERESTING_INTS)
    if roll < 0.6:
        return rng.choice(INTERESTING_STRINGS)
    if roll < 0.7:
        return rng.choice((None, True, False, 0.5, -0.0, 1e308, 3.0))
    if roll < 0.8 and depth < 2:
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    if roll < 0.85 and depth < 2:
        return {rng.choice(INTERESTING_STRINGS): random_value(rng, depth + 1) for _ in range(rng.randrange(3))}
    return rng.randrange(-4, 1 << rng.choice((4, 8, 16, 33)))


def _containers(value, path=()):
    """(path, container) of every dict and list inside `value`, `value` included."""
    if isinstance(value, (dict, list)):
        yield path, value
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, child in items:
            yield from _containers(child, path + (key,))


def _sections(header):
    tensors = header.get("tensors")
    if not isinstance(tensors, list):
        return
    for record in tensors:
        if isinstance(record, dict):
            for value in record.values():
                if isinstance(value, dict) and "crc32" in value:
                    yield value


def _edit_field(rng, header, payload):
    containers = [c for _, c in _containers(header) if c]
    target = rng.choice(containers)
    key = rng.choice(list(target)) if isinstance(target, dict) else rng.randrange(len(target))
    current = target[key]
    if isinstance(current, int) and not isinstance(current, bool) and rng.random() < 0.5:
        target[key] = current + rng.choice((-1, 1, -8, 8, 1 << 32, -current, current))
    else:
        target[key] = random_value(rng)


def _delete_or_add_field(rng, header, payload):
    containers = [c for _, c in _containers(header) if c]
    target = rng.choice(containers)
    if isinstance(target, dict):
        if rng.random() < 0.7:
            del target[rng.choice(list(target))]
        else:
            target[rng.choice(INTERESTING_STRINGS)] = random_value(rng)
    elif rng.random() < 0.5:
        del target[rng.randrange(len(target))]
    else:
        target.insert(rng.randrange(len(target) + 1), copy.deepcopy(rng.choice(target)))


def _shape(rng, header, payload):
    records = [r for r in header.get("tensors", []) if isinstance(r, dict) and isinstance(r.get("shape"), list)]
    if not records:
        return _edit_field(rng, header, payload)
    record = rng.choice(records)
    shape = list(record["shape"]) or [1]
    roll = rng.random()
    if roll < 0.4:  # a zero-length axis next to a huge one
        shape = [0] + [rng.choice(INTERESTING_INTS[-14:-4])] + shape[1:]
        rng.shuffle(shape)
    elif roll < 0.7:
        shape[rng.randrange(len(shape))] = rng.choice(INTERESTING_INTS)
    else:
        shape = shape[::-1] if rng.random() < 0.5 else shape + [1]
    record["shape"] = shape
    if rng.random() < 0.5 and "axis" in record:
        record["axis"] = rng.randrange(-len(shape) - 1, len(shape) + 1)


def _swap_records_or_sections(rng, header, payload):
    tensors = header.get("tensors")
    if not isinstance(tensors, list) or len(tensors) < 2:
        return _edit_field(rng, header, payload)
    a, b = rng.sample(range(len(tensors)), 2)
    if rng.random() < 0.5:
        tensors[a], tensors[b] = tensors[b], tensors[a]
        return
    sections_a = [k for k, v in tensors[a].items() if isinstance(v, dict)]
    sections_b = [k for k, v in tensors[b].items() if isinstance(v, dict)]
    if sections_a and sections_b:
        key_a, key_b = rng.choice(sections_a), rng.choice(sections_b)
        tensors[a][key_a], tensors[b][key_b] = tensors[b][key_b], tensors[a][key_a]


def _payload_bytes(rng, header, payload):
    if not payload:
        return
    for _ in range(rng.randrange(1, 5)):
        position = rng.randrange(len(payload))
        payload[position] = rng.randrange(256) if rng.random() < 0.5 else payload[position] ^ (1 << rng.randrange(8))


def _resize_section(rng, header, payload):
    """Grow, shrink or replace a section's bytes, moving every later section (lengths stay consistent)."""
    sections = [s for s in _sections(header) if isinstance(s.get("offset"), int) and isinstance(s.get("length"), int)
                and 0 <= s["offset"] and 0 <= s["length"] and s["offset"] + s["length"] <= len(payload)]
    if not sections:
        return _payload_bytes(rng, header, payload)
    section = rng.choice(sections)
    start, end = section["offset"], section["offset"] + section["length"]
    roll = rng.random()
    if roll < 0.3:
        new = bytes(payload[start:end - rng.randrange(1, 9)]) if end > start else b""
    elif roll < 0.6:
        new = bytes(payload[start:end]) + bytes(rng.randrange(256) for _ in range(rng.randrange(1, 9)))
    elif roll < 0.8:
        new = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 2 * (end - start) + 8)))
    else:
        new = bytes(rng.choice((0, 255)) for _ in range(end - start))
    delta = len(new) - (end - start)
    payload[start:end] = new
    for other in sections:
        if other is not section and other["offset"] >= end:
            other["offset"] += delta
    section["length"] = len(new)
    if rng.random() < 0.5 and "table_bytes" in section:
        section["table_bytes"] = min(section["table_bytes"], len(new))
    if rng.random() < 0.5 and "count" in section:
        section["count"] = rng.choice((section["count"] * 2, section["count"] + 1, len(new) * 8, 1 << 28))


MUTATORS = (_edit_field, _edit_field, _delete_or_add_field, _shape, _swap_records_or_sections, _payload_bytes,
            _resize_section, _resize_section)


def mutate(rng: random.Random, data: bytes) -> bytes:
    """`data` (a valid .wz file) after 1-3 structural mutations, with every CRC-32 made valid again."""
    header, payload = disassemble(data)
    header = copy.deepcopy(header)
    payload = bytearray(payload)
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        try:
            rng.choice(MUTATORS)(rng, header, payload)
        except (AttributeError, TypeError, KeyError, IndexError, ValueError):
            pass  # an earlier mutation left a structure this one cannot walk: keep what was done
    for descriptor in _sections(header):
        offset, length = descriptor.get("offset"), descriptor.get("length")
        if isinstance(offset, int) and isinstance(length, int) and 0 <= offset and 0 <= length and rng.random() < 0.95:
            descriptor["crc32"] = zlib.crc32(bytes(payload[offset:offset + length]))
    if rng.random() < 0.95:
        header["payload_length"] = len(payload)
    try:
        return assemble(header, bytes(payload), deflate_header=rng.random() < 0.8,
                        header_at_end=rng.random() < 0.7)  # format 1.1 layout, or 1.0's header first
    except Exception:  # noqa: BLE001 - a header the writer cannot serialise: use it unsealed
        return data
