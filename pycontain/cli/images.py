"""Image commands: ``images``, ``build``, ``rmi``, ``pull``, ``push``, ``save``,
``load`` and ``commit``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

ORDER = 20


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("images", help="list images in the store")
    p.add_argument("-q", "--quiet", action="store_true", help="digests only")
    p.add_argument("-a", "--all", action="store_true", help="also untagged (intermediate) images")
    p.set_defaults(handler=cmd_images)

    p = subparsers.add_parser("build", help="build an image from a Containerfile",
                              description="Build DIR's Containerfile (or Dockerfile). Unchanged steps come from "
                                          "the cache.")
    p.add_argument("-t", "--tag", help="name:tag for the result")
    p.add_argument("-f", "--file", help="the Containerfile (default: DIR/Containerfile or DIR/Dockerfile)")
    p.add_argument("--no-cache", action="store_true", help="run every step")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or step output")
    p.add_argument("dir", help="the build context")
    p.set_defaults(handler=cmd_build)

    p = subparsers.add_parser("rmi", help="remove images (and layers nothing else uses)")
    p.add_argument("images", nargs="+")
    p.set_defaults(handler=cmd_rmi)

    p = subparsers.add_parser("pull", help="pull an image from a registry (host:port/name:tag)")
    p.add_argument("ref")
    p.set_defaults(handler=cmd_pull)

    p = subparsers.add_parser("push", help="push an image to a registry (host:port/name:tag)")
    p.add_argument("image")
    p.add_argument("ref", nargs="?")
    p.set_defaults(handler=cmd_push)

    p = subparsers.add_parser("save", help="write an image to an OCI layout or docker-archive tar")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--format", choices=["oci", "docker-archive"], default="oci")
    p.add_argument("image")
    p.set_defaults(handler=cmd_save)

    p = subparsers.add_parser("load", help="import an OCI layout or docker/podman save archive")
    p.add_argument("-i", "--input", required=True)
    p.add_argument("-t", "--tag", help="which image of the archive, or a tag for it")
    p.set_defaults(handler=cmd_load)

    p = subparsers.add_parser("commit", help="make an image of a container's changes")
    p.add_argument("container")
    p.add_argument("tag", nargs="?")
    p.set_defaults(handler=cmd_commit)


def cmd_images(args: argparse.Namespace) -> int:
    # Records, not images()' DataFrame: pandas would be most of the time.
    from pycontain.image import image_records

    records = image_records()
    if not args.all:
        records = [r for r in records if r["tag"] is not None]
    if args.quiet:
        for r in records:
            print(r["digest"])
        return 0
    from pycontain.cli._table import ago, table
    from pycontain.units import format_size

    rows = [(r["tag"] or "<none>", r["digest"].removeprefix("sha256:")[:12], r["layers"], format_size(r["size"]),
             ago(r["created"])) for r in records]
    print(table(["TAG", "IMAGE ID", "LAYERS", "SIZE", "CREATED"], rows))
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    import os

    from pycontain.build import build
    from pycontain.cli import fork_containers_here

    fork_containers_here()  # every RUN step is a container

    source = args.file or args.dir
    if args.file and not os.path.isabs(args.file) and not os.path.exists(args.file):
        source = os.path.join(args.dir, args.file)
    out = None if args.quiet else (lambda text: (sys.stderr.write(text), sys.stderr.flush()))
    result = build(source, tag=args.tag, progress=not args.quiet, no_cache=args.no_cache,
                   on_output=out)  # type: ignore[arg-type]
    if not args.quiet:
        for step in result.steps:
            state = "cached" if step.cached else f"{step.seconds:.2f} s"
            print(f"step {step.index}: {step.instruction[:70]:<70} {state}", file=sys.stderr)
        print(f"{result.cached_steps} of {len(result.steps)} steps from the cache", file=sys.stderr)
    print(args.tag or result.image.digest)
    return 0


def cmd_rmi(args: argparse.Namespace) -> int:
    from pycontain.errors import PycontainError
    from pycontain.image import Image

    code = 0
    for ref in args.images:
        try:
            Image.get(ref).remove()
            print(ref)
        except PycontainError as e:
            print(f"pycontain: {e}", file=sys.stderr)
            code = 1
    return code


def cmd_pull(args: argparse.Namespace) -> int:
    from pycontain.image import Image

    img = Image.pull(args.ref)
    print(img.digest)
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from pycontain.image import Image

    print(Image.get(args.image).push(args.ref))
    return 0


def cmd_save(args: argparse.Namespace) -> int:
    from pycontain.image import Image

    Image.get(args.image).save(args.output, format=args.format)
    return 0


def cmd_load(args: argparse.Namespace) -> int:
    from pycontain.image import Image

    img = Image.load(args.input, tag=args.tag)
    print(img.tag or img.digest)
    return 0


def cmd_commit(args: argparse.Namespace) -> int:
    from pycontain.container import Container

    img = Container.open(args.container).commit(tag=args.tag)
    print(args.tag or img.digest)
    return 0
