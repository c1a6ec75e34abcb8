"""Seeded byte streams, running checksums and the environment knobs of the chaos and
soak tests (test_chaos.py).

Every connection's outgoing bytes come from a `ByteStream`: a sequence of chunks made
by a random.Random seeded with a string, so the stream can be made again later to get
the checksum of any prefix of it (a connection cut early must have echoed a prefix of
what it sent) without keeping the bytes. `Tally` is a running length and BLAKE2b
checksum; it may also keep the bytes, only so that a failure can say where they went
wrong and whose bytes arrived instead.

Environment:
  GOLOOP_CHAOS_SEED     integer seed (default: a random one, printed and put in every
                        failure message, so a run can be replayed); the soak tests
                        use it too
  GOLOOP_CHAOS_SCALE    float, default 1: the chaos test runs 64 x SCALE connections
                        of up to 2 MiB x SCALE each (`make stress` sets it larger)
  GOLOOP_CHAOS_ACTIONS  comma list of chaos actions to run (default: all of them;
                        "none" for plain concurrent echo traffic); test_chaos.py
                        lists them
  GOLOOP_CHAOS_TRACE    a file to append every chaos action to as it happens
  GOLOOP_SOAK_BYTES     bytes pushed through each soak test (default 32 MiB;
                        1 GiB, "1G", is the full size); K, M and G suffixes work
"""

import hashlib
import os
import random

KEEP_LIMIT = 64 << 20  # keep received bytes for diagnosis up to this many in total


def env_seed():
    raw = os.environ.get("GOLOOP_CHAOS_SEED", "").strip()
    if raw:
        return int(raw, 0)
    return random.SystemRandom().randrange(1 << 32)


def env_float(name, default):
    raw = os.environ.get(name, "").strip()
    return float(raw) if raw else default


def env_size(name, default):
    raw = os.environ.get(name, "").strip().upper()
    if not raw:
        return default
    mult = 1
    for suffix, m in (("K", 1 << 10), ("M", 1 << 20), ("G", 1 << 30)):
        if raw.endswith((suffix, suffix + "IB", suffix + "B")):
            raw = raw[:raw.index(suffix)]
            mult = m
            break
    return int(float(raw) * mult)


def env_actions(known):
    """The chaos actions GOLOOP_CHAOS_ACTIONS enables, in `known`'s order."""
    raw = os.environ.get("GOLOOP_CHAOS_ACTIONS", "").strip()
    if not raw or raw == "all":
        return tuple(known)
    if raw == "none":
        return ()
    names = [n.strip() for n in raw.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"GOLOOP_CHAOS_ACTIONS names unknown actions {unknown}; "
                         f"known: {', '.join(known)}")
    return tuple(n for n in known if n in names)


def new_hash():
    return hashlib.blake2b(digest_size=16)


class Tally:
    """A running byte count and checksum; keeps the bytes too when `keep`."""

    __slots__ = ("n", "h", "data")

    def __init__(self, keep=False):
        self.n = 0
        self.h = new_hash()
        self.data = bytearray() if keep else None

    def add(self, chunk):
        self.n += len(chunk)
        self.h.update(chunk)
        if self.data is not None:
            self.data += chunk

    def digest(self):
        return self.h.hexdigest()

    def __repr__(self):
        return f"{self.n} B {self.digest()[:12]}"


def chaos_write_size(rng):
    """Mostly small writes, some tiny, a few large."""
    r = rng.random()
    if r < 0.3:
        return rng.randint(1, 64)
    if r < 0.85:
        return rng.randint(1, 4096)
    return rng.randint(4097, 32768)


class ByteStream:
    """`total` seeded random bytes in chunks of seeded random sizes."""

    def __init__(self, key, total, size_fn=chaos_write_size):
        self.key = key
        self.total = total
        self.size_fn = size_fn

    def chunks(self):
        rng = random.Random(self.key)
        left = self.total
        while left > 0:
            n = min(left, self.size_fn(rng))
            yield rng.randbytes(n)
            left -= n

    def prefix(self, n):
        out = bytearray()
        for chunk in self.chunks():
            if len(out) >= n:
                break
            out += chunk
        return bytes(out[:n])

    def prefix_digest(self, n):
        h = new_hash()
        got = 0
        for chunk in self.chunks():
            if got >= n:
                break
            take = chunk[:n - got]
            h.update(take)
            got += len(take)
        return h.hexdigest()


def explain_mismatch(name, stream, got, others):
    """Where the bytes `got` (which should be a prefix of `stream`) first differ, and
    whether the bytes found there belong to another stream in `others` (misdelivery)
    or to another place in this one (duplication, reordering, loss)."""
    want = stream.prefix(min(len(got), stream.total))
    off = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), None)
    if off is None:
        if len(got) > stream.total:
            return (f"{name}: {len(got) - stream.total} bytes more than the "
                    f"{stream.total} sent")
        return f"{name}: bytes equal a prefix (only the count differs)"
    probe = bytes(got[off:off + 16])
    where = []
    pos = want.find(probe)
    if pos < 0 and len(want) < stream.total:
        pos = stream.prefix(stream.total).find(probe)
    if pos >= 0:
        where.append(f"own stream at offset {pos}")
    for other_name, other in others:
        p = other.prefix(other.total).find(probe)
        if p >= 0:
            where.append(f"{other_name} at offset {p}")
        if len(where) >= 4:
            break
    origin = "; found in " + ", ".join(where) if where else "; found in no stream"
    return (f"{name}: first differing byte at offset {off} of {len(got)}: got "
            f"{probe.hex()} expected {bytes(want[off:off + 16]).hex()}{origin}")
