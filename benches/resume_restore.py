"""How long a restore takes to yield its first item in the middle of a 1,000-shard epoch (issue #16's target:
within a second on local shards).

    python benches/resume_restore.py [--shards 1000] [--per-shard 20] [--data DIR]

Writes (or reuses) small indexed shards, reads half an epoch through a shard shuffle and a sample shuffle
buffer, takes `state_dict()`, then times a fresh dataset's `load_state_dict()` up to its first item, and checks
that the restored run goes on exactly as the uninterrupted one.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import fastwds as wds


def make_shards(directory: str, shards: int, per_shard: int) -> str:
    """`shards` indexed shards of `per_shard` small samples in `directory` (kept when present)."""
    pattern = os.path.join(directory, "r-%06d.tar")
    if not os.path.exists(pattern % (shards - 1) + ".wdsidx"):
        with wds.ShardWriter(pattern, maxcount=per_shard, verbose=0) as sink:
            for i in range(shards * per_shard):
                sink.write({"__key__": f"k{i:07d}", "txt": f"sample {i}", "cls": i % 1000})
    return os.path.join(directory, f"r-{{000000..{shards - 1:06d}}}.tar")


def pipeline(urls: str) -> wds.WebDataset:
    return wds.WebDataset(urls, shardshuffle=100, seed=7).shuffle(1000, seed=7).to_tuple("__key__", "cls")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=int, default=1000)
    parser.add_argument("--per-shard", type=int, default=20)
    parser.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "fastwds-resume-bench"))
    args = parser.parse_args()
    os.makedirs(args.data, exist_ok=True)
    urls = make_shards(args.data, args.shards, args.per_shard)
    total = args.shards * args.per_shard
    ds = pipeline(urls)
    it = iter(ds)
    head = [next(it) for _ in range(total // 2)]
    state = json.loads(json.dumps(ds.state_dict()))
    rest_uninterrupted = [next(it) for _ in range(1000)]
    del it
    start = time.perf_counter()
    restored = pipeline(urls)
    restored.load_state_dict(state)
    resumed = iter(restored)
    first = next(resumed)
    first_item = time.perf_counter() - start
    rest = [first] + [next(resumed) for _ in range(999)]
    assert rest == rest_uninterrupted, "the restored run differs from the uninterrupted one"
    print(
        f"{args.shards} shards x {args.per_shard} samples, checkpoint after {len(head):,} samples: "
        f"state {len(json.dumps(state)):,} bytes; restore to first item {first_item * 1000:.0f} ms; "
        "next 1,000 items identical to the uninterrupted run"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
