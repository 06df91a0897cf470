"""Re-pin the third-party images of the Dockerfiles and docker-compose.yml to the digests their tags point to now.

    make pin-images          (python -m deploy.pin_images)

Every `NAME:TAG@sha256:DIGEST` of those files, a compose default `NAME:${VARIABLE:-TAG@sha256:DIGEST}` included,
keeps its tag and gets the digest that the registry gives for that tag today: the image index's (every platform),
as `docker buildx imagetools inspect` reports it. Needs Docker with buildx and the registries; review the diff,
build the images and run the tests before committing. tests/unit/test_containers.py checks that every third-party
image is written in this form, so that this finds them all.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILES = ("Dockerfile.api", "Dockerfile.worker", "docker-compose.yml")
PINNED = re.compile(
    r"(?P<name>[a-z0-9][a-z0-9._/-]*):(?P<default>\$\{[A-Z0-9_]+:-)?"
    r"(?P<tag>[A-Za-z0-9_][A-Za-z0-9._-]*)@(?P<digest>sha256:[0-9a-f]{64})(?(default)\})"
)
"""An image by tag and digest, as written in FILES (a compose variable's default too)."""


def current_digest(image: str) -> str:
    """The digest that `image` (NAME:TAG) points to in its registry now."""
    inspect = ["docker", "buildx", "imagetools", "inspect", "--format", "{{json .Manifest.Digest}}", image]
    output = subprocess.run(inspect, check=True, capture_output=True, text=True, timeout=120).stdout
    digest = json.loads(output)
    if not isinstance(digest, str) or not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
        raise SystemExit(f"pin-images: no digest for {image}: {output.strip()!r}")
    return digest


def main() -> None:
    resolved: dict[str, str] = {}

    def repin(match: re.Match[str]) -> str:
        image = f"{match['name']}:{match['tag']}"
        if image not in resolved:
            resolved[image] = current_digest(image)
            change = "unchanged" if resolved[image] == match["digest"] else f"{match['digest']} -> {resolved[image]}"
            print(f"pin-images: {image}: {change}", file=sys.stderr)
        return match.group(0).replace(match["digest"], resolved[image])

    for name in FILES:
        path = ROOT / name
        text = path.read_text()
        pinned = PINNED.sub(repin, text)
        if pinned != text:
            path.write_text(pinned)


if __name__ == "__main__":
    main()
