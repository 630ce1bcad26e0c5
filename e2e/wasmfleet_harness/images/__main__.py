"""``python -m wasmfleet_harness.images`` (``make images``): build, and push when asked.

Prints each image's reference, digest, and per platform the build time and size.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from wasmfleet_harness.images.build import build_images
from wasmfleet_harness.images.recipe import IMAGES, PLATFORMS, Platform


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m wasmfleet_harness.images",
        description="Builds the operator and agent images without Docker, for every "
        "platform, and pushes each as an image index tagged by its content.",
    )
    parser.add_argument(
        "--registry", metavar="HOST:PORT", help="push there, over plain HTTP (loopback)"
    )
    parser.add_argument(
        "--image",
        action="append",
        choices=[spec.name for spec in IMAGES],
        help="only this image (repeatable; default: all)",
    )
    parser.add_argument(
        "--platform",
        action="append",
        type=Platform.parse,
        help="only this platform (repeatable; default: linux/amd64 and linux/arm64)",
    )
    args = parser.parse_args(argv)
    started = time.monotonic()
    images = build_images(
        registry=args.registry,
        names=args.image or [spec.name for spec in IMAGES],
        platforms=args.platform or PLATFORMS,
    )
    for image in images:
        print(f"{image.name}: {image.reference} ({image.outcome})")
        if image.digest is not None:
            print(f"  {image.pinned}")
        for platform in image.platforms:
            built = f"built in {platform.seconds:.0f}s" if platform.seconds else "reused"
            print(f"  {platform.platform}: {built}, {platform.size / 1e6:.0f} MB unpacked")
    print(f"done in {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
