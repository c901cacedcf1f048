"""``edgeworks r2 object get|put|delete BUCKET/KEY``: seed and inspect a bucket, as wrangler's
``r2 object`` commands do locally.

They open the bucket in the app's state dir (``--state-dir`` to override) through the same store
as the running isolates (`runtime/bindings/r2_store.py`), so they are safe while a server runs:
a put is streamed from ``--file`` (or stdin with ``--pipe``) and published atomically; a get writes
to ``--file`` (or stdout with ``--pipe``, the default). ``--tenant`` addresses a tenant's keys of a
tenant-scoped binding. Exit 0, 1 for a missing object or a refused call, 2 on a bad app or argument.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

__all__ = ["register"]


def register(sub: Any) -> None:
    p = sub.add_parser("r2", help="R2 buckets: get, put and delete objects")
    r2 = p.add_subparsers(dest="r2_command", required=True)
    obj = r2.add_parser("object", help="one object of a bucket")
    actions = obj.add_subparsers(dest="object_command", required=True)
    for name, help_text in (("get", "write an object's body to --file or stdout"),
                            ("put", "store --file (or stdin with --pipe) as an object"),
                            ("delete", "delete an object")):
        action = actions.add_parser(name, help=help_text)
        action.add_argument("path", metavar="BUCKET/KEY", help="the bucket name and the object's key")
        action.add_argument("--app", default=".", help="the app directory (default: .)")
        action.add_argument("--state-dir", dest="state_dir", default=None, help="state directory (default: the app's)")
        action.add_argument("--tenant", default=None, help="the tenant's keys, for a tenant-scoped binding")
        if name != "delete":
            action.add_argument("--file", default=None, help="the file to read (put) or write (get)")
            action.add_argument("--pipe", action="store_true", help="use stdin (put) or stdout (get)")
        if name == "put":
            action.add_argument("--content-type", dest="content_type", default=None, help="the object's content type")
        action.set_defaults(func=_run, action=name)


def _file_chunks(f: BinaryIO) -> Iterator[bytes]:
    while chunk := f.read(1 << 16):
        yield chunk


def _run(args: argparse.Namespace) -> int:
    from runtime.bindings.r2 import R2BucketBinding
    from runtime.config import ConfigError, load_app

    bucket_name, _, key = args.path.partition("/")
    try:
        R2BucketBinding(binding="CLI", bucket_name=bucket_name)
    except ValueError:
        print(f"edgeworks r2: {bucket_name!r} is not a bucket name (3-63 of a-z, 0-9 and -)", file=sys.stderr)
        return 2
    if not key:
        print("edgeworks r2: name the object as BUCKET/KEY", file=sys.stderr)
        return 2
    if args.state_dir:
        state_dir = Path(args.state_dir).resolve()
    else:
        try:
            state_dir = load_app(args.app).state_dir
        except ConfigError as e:
            print("edgeworks r2: the app's configuration is invalid:\n  " + "\n  ".join(e.problems), file=sys.stderr)
            return 2
    return asyncio.run(_object(args, state_dir / "r2" / bucket_name, bucket_name, key))


async def _object(args: argparse.Namespace, root: Path, bucket_name: str, key: str) -> int:
    from runtime.bindings.r2 import R2Bucket, R2Error, R2ObjectBody
    from runtime.bindings.r2_store import Store
    from runtime.isolate.context import RequestScope, use_scope
    from runtime.protocol import Identity

    identity = Identity(None, args.tenant, (), {}) if args.tenant else None
    use_scope(RequestScope(request_id="cli", identity=identity))
    store = Store(root)
    bucket = R2Bucket(store, bucket_name, tenant_scoped=args.tenant is not None)
    try:
        if args.action == "delete":
            await bucket.delete(key)
            print(f"deleted {bucket_name}/{key}")
            return 0
        if args.action == "put":
            http = {"contentType": args.content_type} if args.content_type else None
            if args.file:
                with open(args.file, "rb") as f:
                    obj = await bucket.put(key, _file_chunks(f), http_metadata=http)
            else:
                obj = await bucket.put(key, _file_chunks(sys.stdin.buffer), http_metadata=http)
            if obj is None:  # only a put with a condition is refused; this one has none
                return 1
            print(f"put {bucket_name}/{key}: {obj.size} bytes, etag {obj.etag}", file=sys.stderr)
            return 0
        got = await bucket.get(key)
        if not isinstance(got, R2ObjectBody):
            print(f"edgeworks r2: no object {bucket_name}/{key}", file=sys.stderr)
            return 1
        out: BinaryIO = open(args.file, "wb") if args.file else sys.stdout.buffer  # noqa: SIM115
        try:
            async for chunk in got.body:
                out.write(chunk)
        finally:
            if args.file:
                out.close()
            else:
                out.flush()
        return 0
    except (R2Error, OSError) as e:
        print(f"edgeworks r2: {e}", file=sys.stderr)
        return 1
    finally:
        store.close()
