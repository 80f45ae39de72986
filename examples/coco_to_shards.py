"""Convert COCO (images + instances, captions and person keypoints) to WebDataset shards, then read them back.

The COCO layout this reads:

    COCO/annotations/instances_train2014.json
    COCO/annotations/captions_train2014.json
    COCO/annotations/person_keypoints_train2014.json
    COCO/train2014/COCO_train2014_000000000009.jpg ...

Each image becomes one sample keyed by its zero-padded image id, with the fields `.jpg` (the file as is),
`.instances.json`, `.captions.json` and `.persons.json` (that image's annotations from each file, a list).

    python examples/coco_to_shards.py --coco /data/COCO --split train2014 -o 'coco/train-%06d.tar'
    python examples/coco_to_shards.py --make-sample-data /tmp/coco   # a small synthetic COCO, converted
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from collections import defaultdict
from typing import Any

import fastwds

ANNOTATIONS = {
    "instances": "instances_{}.json",
    "captions": "captions_{}.json",
    "persons": "person_keypoints_{}.json",
}


def load_annotations(coco: str, split: str) -> tuple[list[dict[str, Any]], dict[str, dict[int, list[Any]]]]:
    """The split's image records and, per annotation kind, the annotations of each image id."""
    images: dict[int, dict[str, Any]] = {}
    by_kind: dict[str, dict[int, list[Any]]] = {}
    for kind, template in ANNOTATIONS.items():
        path = os.path.join(coco, "annotations", template.format(split))
        with open(path) as f:
            data = json.load(f)
        for image in data["images"]:
            images.setdefault(image["id"], image)
        per_image: dict[int, list[Any]] = defaultdict(list)
        for annotation in data["annotations"]:
            per_image[annotation["image_id"]].append(annotation)
        by_kind[kind] = per_image
    return [images[i] for i in sorted(images)], by_kind


def convert(coco: str, split: str, pattern: str, maxcount: int, maxsize: float) -> list[str]:
    """Writes one sample per image into shards named by `pattern`; returns the shard names."""
    images, by_kind = load_annotations(coco, split)
    written: list[str] = []
    with fastwds.ShardWriter(
        pattern, maxcount=maxcount, maxsize=maxsize, post=written.append, verbose=0
    ) as sink:
        for image in images:
            with open(os.path.join(coco, split, image["file_name"]), "rb") as f:
                jpeg = f.read()
            sample = {"__key__": f"{image['id']:012d}", "jpg": jpeg}
            for kind, per_image in by_kind.items():
                sample[kind + ".json"] = per_image.get(image["id"], [])
            sink.write(sample)
    return written


def make_sample_data(directory: str, split: str = "train2014", count: int = 24) -> str:
    """Writes a small synthetic COCO (random images, boxes, captions, keypoints) under `directory`."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    picks = random.Random(0)
    os.makedirs(os.path.join(directory, "annotations"), exist_ok=True)
    os.makedirs(os.path.join(directory, split), exist_ok=True)
    categories = [
        {"id": 1, "name": "person", "supercategory": "person"},
        {"id": 18, "name": "dog", "supercategory": "animal"},
    ]
    images, instances, captions, persons = [], [], [], []
    for n in range(count):
        image_id = 9 + 7 * n
        h, w = (int(x) for x in rng.integers(48, 96, size=2))
        pixels = rng.integers(0, 256, size=(h // 4, w // 4, 3), dtype=np.uint8)
        name = f"COCO_{split}_{image_id:012d}.jpg"
        Image.fromarray(pixels).resize((w, h)).save(os.path.join(directory, split, name), quality=85)
        images.append({"id": image_id, "file_name": name, "width": w, "height": h})
        for _ in range(picks.randrange(3)):
            category = picks.choice(categories)
            box = [
                picks.randrange(w // 2),
                picks.randrange(h // 2),
                picks.randrange(4, w // 2),
                picks.randrange(4, h // 2),
            ]
            annotation = {
                "id": len(instances) + 1,
                "image_id": image_id,
                "category_id": category["id"],
                "bbox": box,
            }
            instances.append(annotation | {"area": box[2] * box[3], "iscrowd": 0})
            if category["name"] == "person":
                keypoints = [v for _ in range(17) for v in (picks.randrange(w), picks.randrange(h), 2)]
                persons.append(annotation | {"keypoints": keypoints, "num_keypoints": 17})
        for c in range(2):
            captions.append(
                {
                    "id": len(captions) + 1,
                    "image_id": image_id,
                    "caption": f"synthetic image {n}, caption {c}",
                }
            )
    for kind, records in (("instances", instances), ("captions", captions), ("persons", persons)):
        path = os.path.join(directory, "annotations", ANNOTATIONS[kind].format(split))
        with open(path, "w") as f:
            json.dump({"images": images, "annotations": records, "categories": categories}, f)
    return directory


def show_first_sample(shards: list[str]) -> None:
    """Reads the shards back with fastwds.WebDataset and prints a summary of the first sample."""
    dataset = fastwds.WebDataset(shards, shardshuffle=False).decode("rgb8")
    count = 0
    for sample in dataset:
        if count == 0:
            print("first sample:", sample["__key__"])
            print("  jpg:", sample["jpg"].shape, sample["jpg"].dtype)
            for kind in ANNOTATIONS:
                print(f"  {kind}.json: {len(sample[kind + '.json'])} annotations")
            if sample["captions.json"]:
                print("  caption:", sample["captions.json"][0]["caption"])
        count += 1
    print(f"read back {count} samples from {len(shards)} shards")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--coco", help="the COCO directory (annotations/ and the image folders)")
    parser.add_argument("--split", default="train2014", help="which split (default %(default)s)")
    parser.add_argument(
        "-o", "--output", help="shard pattern (default: coco-shards/SPLIT-%%06d.tar under --coco)"
    )
    parser.add_argument("--maxcount", type=int, default=10000, help="samples per shard (default %(default)s)")
    parser.add_argument("--maxsize", type=float, default=1e9, help="bytes per shard (default %(default)g)")
    parser.add_argument(
        "--make-sample-data", metavar="DIR", help="make a small synthetic COCO in DIR and convert it"
    )
    args = parser.parse_args(argv)
    if args.make_sample_data:
        args.coco = make_sample_data(args.make_sample_data, args.split)
        print("made a synthetic COCO in", args.coco)
        args.maxcount = min(args.maxcount, 10)
    if not args.coco:
        parser.error("give --coco DIR or --make-sample-data DIR")
    pattern = args.output or os.path.join(args.coco, "coco-shards", args.split + "-%06d.tar")
    os.makedirs(os.path.dirname(os.path.abspath(pattern)), exist_ok=True)
    shards = convert(args.coco, args.split, pattern, args.maxcount, args.maxsize)
    print(f"wrote {len(shards)} shards:", " ".join(shards))
    show_first_sample(shards)
    return 0


if __name__ == "__main__":
    sys.exit(main())
