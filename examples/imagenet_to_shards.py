"""Convert an ImageNet-style training set to shuffled WebDataset shards, then read them back.

The layout this reads (the ILSVRC CLS-LOC training set as distributed):

    ROOT/train/n01440764/n01440764_10026.JPEG ...     one directory per class (WordNet id)
    ROOT/LOC_synset_mapping.txt                        "n01440764 tench, Tinca tinca": line number = class
    ROOT/bboxes/n01440764/n01440764_10026.xml          optional PASCAL-VOC bounding boxes

Each image becomes one sample keyed by its file name stem with `.jpg` (the file as is), `.cls` (the class
number) and `.json` (`{"cls", "cname", "wnid", "fname", "bboxes"}`). The images are shuffled before writing so
that each shard holds a mix of classes; shards are cut at --maxsize bytes (1 GB by default).

    python examples/imagenet_to_shards.py --root /data/imagenet -o 'imagenet/train-%06d.tar'
    python examples/imagenet_to_shards.py --make-sample-data /tmp/imagenet   # a small synthetic set
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import xml.etree.ElementTree as ET
from typing import Any

import fastwds


def read_synsets(path: str) -> dict[str, tuple[int, str]]:
    """wnid -> (class number, class name) from a LOC_synset_mapping.txt-style table."""
    table = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                wnid, _, names = line.strip().partition(" ")
                table[wnid] = (len(table), names.split(",")[0].strip())
    return table


def read_bboxes(path: str) -> list[dict[str, Any]]:
    """The objects of a PASCAL-VOC annotation file as `{"wnid", "box": [xmin, ymin, xmax, ymax]}`."""
    boxes = []
    for obj in ET.parse(path).getroot().iter("object"):
        bndbox = obj.find("bndbox")
        if bndbox is None:
            continue
        box = [int(float(bndbox.findtext(k, "0"))) for k in ("xmin", "ymin", "xmax", "ymax")]
        boxes.append({"wnid": obj.findtext("name"), "box": box})
    return boxes


def list_images(root: str) -> list[tuple[str, str]]:
    """(wnid, path) of every image under ROOT/train, in a stable order."""
    train = os.path.join(root, "train")
    images = []
    for wnid in sorted(os.listdir(train)):
        folder = os.path.join(train, wnid)
        for name in sorted(os.listdir(folder)):
            if name.lower().endswith((".jpeg", ".jpg")):
                images.append((wnid, os.path.join(folder, name)))
    return images


def convert(
    root: str, synsets: str, bboxes: str | None, pattern: str, maxsize: float, maxcount: int, seed: int
) -> list[str]:
    """Writes the shuffled images as samples into shards named by `pattern`; returns the shard names."""
    table = read_synsets(synsets)
    images = list_images(root)
    random.Random(seed).shuffle(images)
    written: list[str] = []
    with fastwds.ShardWriter(
        pattern, maxcount=maxcount, maxsize=maxsize, post=written.append, verbose=0
    ) as sink:
        for wnid, path in images:
            stem = os.path.splitext(os.path.basename(path))[0]
            cls, cname = table[wnid]
            meta: dict[str, Any] = {"cls": cls, "cname": cname, "wnid": wnid, "fname": os.path.basename(path)}
            xml = os.path.join(bboxes, wnid, stem + ".xml") if bboxes else None
            if xml and os.path.exists(xml):
                meta["bboxes"] = read_bboxes(xml)
            with open(path, "rb") as f:
                sink.write({"__key__": stem, "jpg": f.read(), "cls": cls, "json": meta})
    return written


SAMPLE_SYNSETS = [
    "n01440764 tench, Tinca tinca",
    "n01443537 goldfish, Carassius auratus",
    "n01484850 great white shark",
    "n01491361 tiger shark, Galeocerdo cuvieri",
]


def make_sample_data(directory: str, per_class: int = 8) -> str:
    """Writes a small synthetic ImageNet (4 classes of random JPEGs, boxes for half) under `directory`."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(1)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "LOC_synset_mapping.txt"), "w") as f:
        f.write("\n".join(SAMPLE_SYNSETS) + "\n")
    for line in SAMPLE_SYNSETS:
        wnid = line.split()[0]
        os.makedirs(os.path.join(directory, "train", wnid), exist_ok=True)
        os.makedirs(os.path.join(directory, "bboxes", wnid), exist_ok=True)
        for n in range(per_class):
            stem = f"{wnid}_{1000 + n}"
            h, w = (int(x) for x in rng.integers(64, 128, size=2))
            pixels = rng.integers(0, 256, size=(h // 4, w // 4, 3), dtype=np.uint8)
            Image.fromarray(pixels).resize((w, h)).save(
                os.path.join(directory, "train", wnid, stem + ".JPEG"), "JPEG"
            )
            if n % 2 == 0:
                with open(os.path.join(directory, "bboxes", wnid, stem + ".xml"), "w") as f:
                    f.write(
                        f"<annotation><filename>{stem}</filename><object><name>{wnid}</name><bndbox>"
                        f"<xmin>2</xmin><ymin>3</ymin><xmax>{w - 5}</xmax><ymax>{h - 7}</ymax>"
                        "</bndbox></object></annotation>\n"
                    )
    return directory


def show_first_sample(shards: list[str]) -> None:
    """Reads the shards back with fastwds.WebDataset and prints the first sample and the class counts."""
    dataset = (
        fastwds.WebDataset(shards, shardshuffle=False).decode("pil").to_tuple("__key__", "jpg", "cls", "json")
    )
    classes: dict[int, int] = {}
    for n, (key, image, cls, meta) in enumerate(dataset):
        if n == 0:
            print(f"first sample: {key} image {image.size} {image.mode} cls {cls} json {meta}")
        classes[cls] = classes.get(cls, 0) + 1
    print(
        f"read back {sum(classes.values())} samples from {len(shards)} shards; per class: {dict(sorted(classes.items()))}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--root", help="the dataset root (train/ and LOC_synset_mapping.txt)")
    parser.add_argument("--synsets", help="the wnid -> class table (default ROOT/LOC_synset_mapping.txt)")
    parser.add_argument("--bboxes", help="bounding-box .xml directory (default ROOT/bboxes when it exists)")
    parser.add_argument("-o", "--output", help="shard pattern (default ROOT/shards/imagenet-train-%%06d.tar)")
    parser.add_argument("--maxsize", type=float, default=1e9, help="bytes per shard (default %(default)g)")
    parser.add_argument(
        "--maxcount", type=int, default=100000, help="samples per shard (default %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the shuffle (default %(default)s)")
    parser.add_argument(
        "--make-sample-data", metavar="DIR", help="make a small synthetic ImageNet in DIR and convert it"
    )
    args = parser.parse_args(argv)
    if args.make_sample_data:
        args.root = make_sample_data(args.make_sample_data)
        print("made a synthetic ImageNet in", args.root)
        args.maxsize = min(args.maxsize, 100_000)  # several shards even for a few dozen small images
    if not args.root:
        parser.error("give --root DIR or --make-sample-data DIR")
    synsets = args.synsets or os.path.join(args.root, "LOC_synset_mapping.txt")
    bboxes = args.bboxes or (
        os.path.join(args.root, "bboxes") if os.path.isdir(os.path.join(args.root, "bboxes")) else None
    )
    pattern = args.output or os.path.join(args.root, "shards", "imagenet-train-%06d.tar")
    os.makedirs(os.path.dirname(os.path.abspath(pattern)), exist_ok=True)
    shards = convert(args.root, synsets, bboxes, pattern, args.maxsize, args.maxcount, args.seed)
    print(f"wrote {len(shards)} shards:", " ".join(shards))
    show_first_sample(shards)
    return 0


if __name__ == "__main__":
    sys.exit(main())
