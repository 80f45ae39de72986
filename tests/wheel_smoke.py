"""Run by scripts/dev.sh in a clean venv holding only the built wheel: the wheel installs and reads a shard
without a Rust toolchain, and `import fastwds` works without torch."""

import io
import os
import sys
import tarfile
import tempfile

import fastwds

assert "torch" not in sys.modules, "import fastwds must not import torch"

with tempfile.TemporaryDirectory() as d:
    path = os.path.join(d, "shard.tar")
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for i in range(10):
            for ext, data in (("txt", f"sample {i}".encode()), ("cls", str(i).encode())):
                info = tarfile.TarInfo(f"s{i:03d}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    samples = list(fastwds.ShardReader([path]))
    assert [s["__key__"] for s in samples] == [f"s{i:03d}" for i in range(10)], samples
    assert samples[3]["txt"] == b"sample 3" and samples[3]["cls"] == b"3", samples[3]
print(f"wheel ok: fastwds {fastwds.__version__ if hasattr(fastwds, '__version__') else ''} read 10 samples")
