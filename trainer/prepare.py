"""Data for the demo: CIFAR-10 when it is there, else the digits stand-in; and one sample image.

``python -m trainer.prepare DATA_DIR`` says which dataset the demo uses.
``python -m trainer.prepare DATA_DIR --sample-image OUT.png`` also writes the first test image
as a PNG (upscaled, as a user's photo would be) and prints its true class.
"""
from __future__ import annotations

import argparse
import os
import sys

from trainer.data import BATCHES_DIR, class_names, validate_split
from trainer.errors import DataError
from trainer.standin import MARKER, make_digits_standin, read_cifar_bin


def prepare(data_dir: str) -> tuple[str, bool]:
    """Return (folder of the .bin files, whether it is real CIFAR-10); make the stand-in if needed."""
    folder = os.path.join(data_dir, BATCHES_DIR)
    if os.path.isdir(folder) and not os.path.exists(os.path.join(folder, MARKER)):
        validate_split(folder, training=True)
        validate_split(folder, training=False)
        return folder, True
    if not (os.path.isdir(folder) and os.path.exists(os.path.join(folder, MARKER))):
        make_digits_standin(data_dir)
    return folder, False


def write_sample_image(folder: str, out_path: str) -> str:
    """Write the first test image, upscaled 4x, as PNG; return its true class name."""
    from PIL import Image

    images, labels = read_cifar_bin(os.path.join(folder, "test_batch.bin"))
    Image.fromarray(images[0]).resize((128, 128), Image.NEAREST).save(out_path)
    names = class_names(folder)
    return names[int(labels[0])] if int(labels[0]) < len(names) else str(int(labels[0]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.prepare", description=__doc__.splitlines()[0])
    parser.add_argument("data_dir")
    parser.add_argument("--sample-image", metavar="OUT.png")
    args = parser.parse_args(argv)
    try:
        folder, real = prepare(args.data_dir)
        if args.sample_image:
            truth = write_sample_image(folder, args.sample_image)
            print(f"sample image {args.sample_image}: true class {truth}")
            return 0
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if real:
        print(f"data: CIFAR-10 at {folder}")
    else:
        print(f"data: CIFAR-10 not found at {folder}; using the scikit-learn digits stand-in written there "
              f"(real CIFAR-10: bash scripts/download_cifar10.sh {args.data_dir})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
