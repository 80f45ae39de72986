"""Run by `scripts/dev.sh wheel` (and so by `scripts/dev.sh test` and the release workflow) in a clean venv
holding only the built wheel and its dependencies: the wheel installs and runs without a Rust toolchain,
`import fastwds` works without torch or Pillow, and a shard is read and its JPEG and PNG decoded by the
extension's own decoders (libjpeg-turbo and png, linked into the wheel) to exactly Pillow's pixels."""

import base64
import hashlib
import io
import os
import sys
import tarfile
import tempfile

import fastwds

assert "torch" not in sys.modules, "import fastwds must not import torch"

# A 40x24 RGB gradient saved by Pillow as JPEG (quality 90) and PNG, and the sha256 of the pixels Pillow
# decodes from each (what `.decode("rgb8")` must give, byte for byte).
JPEG = base64.b64decode(
    "/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDAAMCAgMCAgMDAwMEAwMEBQgFBQQEBQoHBwYIDAoMDAsKCwsNDhIQDQ4RDgsLEBYQERMUFRUV"
    "DA8XGBYUGBIUFRT/2wBDAQMEBAUEBQkFBQkUDQsNFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQU"
    "FBT/wAARCAAYACgDASIAAhEBAxEB/8QAHwAAAQUBAQEBAQEAAAAAAAAAAAECAwQFBgcICQoL/8QAtRAAAgEDAwIEAwUFBAQAAAF9AQID"
    "AAQRBRIhMUEGE1FhByJxFDKBkaEII0KxwRVS0fAkM2JyggkKFhcYGRolJicoKSo0NTY3ODk6Q0RFRkdISUpTVFVWV1hZWmNkZWZnaGlq"
    "c3R1dnd4eXqDhIWGh4iJipKTlJWWl5iZmqKjpKWmp6ipqrKztLW2t7i5usLDxMXGx8jJytLT1NXW19jZ2uHi4+Tl5ufo6erx8vP09fb3"
    "+Pn6/8QAHwEAAwEBAQEBAQEBAQAAAAAAAAECAwQFBgcICQoL/8QAtREAAgECBAQDBAcFBAQAAQJ3AAECAxEEBSExBhJBUQdhcRMiMoEI"
    "FEKRobHBCSMzUvAVYnLRChYkNOEl8RcYGRomJygpKjU2Nzg5OkNERUZHSElKU1RVVldYWVpjZGVmZ2hpanN0dXZ3eHl6goOEhYaHiImK"
    "kpOUlZaXmJmaoqOkpaanqKmqsrO0tba3uLm6wsPExcbHyMnK0tPU1dbX2Nna4uPk5ebn6Onq8vP09fb3+Pn6/9oADAMBAAIRAxEAPwD8"
    "+tL8C9P3f6V2Gl+Ben7v9K9X0vwL0/d/pXYaX4F6fu/0rDDYzzPmsn4p2948o0vwL0/d/pXYaX4F6fu/0r1fS/AvT93+ldhpfgXp+7/S"
    "vq8NjPM/csn4p2948o0vwL0/d/pRX0PpfgXp+7/SivpKeM93c/Y8JxT+6XvHDaV4F6fu/wBK7DSvAvT93+lFFfgOGqy7n+RGT5hiNPeO"
    "w0rwL0/d/pXYaV4F6fu/0oor6vDVZH7lk+YYjT3jsNK8C9P3f6UUUV9JTqy5T9iwmYYj2S94/9k="
)
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAACgAAAAYCAIAAAAH5iiXAAAALklEQVR4nO3NsQkAQAgEwRWOD77/gm1CNFmYfAp4ZF/4gQPGxsbGxsbGxsbG"
    "8xo7kBEq33Jd8AAAAABJRU5ErkJggg=="
)
PIXELS = {
    "jpg": "aed2c6abf462c1b2a8a95d312a50c3d8494428b0af156a3884cf5f0202a9851a",
    "png": "02b7c9046606875b219eee7900d694bd32f26a04bdf172952d937455d6db9d19",
}


def add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


with tempfile.TemporaryDirectory() as d:
    path = os.path.join(d, "shard.tar")
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for i in range(10):
            add(tf, f"s{i:03d}.txt", f"sample {i}".encode())
            add(tf, f"s{i:03d}.cls", str(i).encode())
            add(tf, f"s{i:03d}.jpg", JPEG)
            add(tf, f"s{i:03d}.png", PNG)

    samples = list(fastwds.ShardReader([path]))
    assert [s["__key__"] for s in samples] == [f"s{i:03d}" for i in range(10)], samples
    assert samples[3]["txt"] == b"sample 3" and samples[3]["cls"] == b"3", samples[3]

    # Decoded on the reader threads; with no Pillow installed a fallback to it would raise ImportError.
    dataset = fastwds.WebDataset(path, shardshuffle=False).decode("rgb8").to_tuple("jpg", "png", "cls")
    rows = list(dataset)
    assert [cls for _, _, cls in rows] == list(range(10)), [cls for _, _, cls in rows]
    for jpg, png, _ in rows:
        for ext, array in (("jpg", jpg), ("png", png)):
            assert array.shape == (24, 40, 3) and array.dtype.name == "uint8", (ext, array.shape, array.dtype)
            assert hashlib.sha256(array.tobytes()).hexdigest() == PIXELS[ext], (
                f"{ext} pixels differ from Pillow's"
            )
    assert "PIL" not in sys.modules, "decoding fell back to Pillow"

print(f"wheel ok: fastwds {fastwds.__version__} read 10 samples and decoded 10 JPEGs and 10 PNGs")
