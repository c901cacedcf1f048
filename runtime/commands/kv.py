"""``edgeworks kv get|put|list|delete``: seed and inspect a KV namespace in the state dir.

The namespace is named by a script's binding (``--binding NS``, read from the app's manifest;
``--script`` picks the script when several bind that name) or by its id (``--namespace-id``, no
manifest needed). The file is opened with the same helper as the running isolates, so the
commands are safe while a server runs, and what they write is visible to it at once.
``--tenant`` names a tenant's keys of a tenant-scoped namespace. The same limits as the binding
apply. Exit 0; 1 when ``get`` finds no key or a limit refuses the call; 2 on a bad app or binding.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["register"]


def register(sub: Any) -> None:
    p = sub.add_parser("kv", help="KV namespaces: get, put, list and delete keys")
    kv = p.add_subparsers(dest="kv_command", required=True)
    get = kv.add_parser("get", help="print a key's value")
    get.add_argument("key")
    get.add_argument("--metadata", action="store_true", help="print {value, metadata, expiration} as JSON")
    get.set_defaults(func=_get)
    put = kv.add_parser("put", help="write a key")
    put.add_argument("key")
    put.add_argument("value", nargs="?", default=None, help="the value (or --path FILE)")
    put.add_argument("--path", default=None, help="read the value from this file (bytes as they are)")
    put.add_argument("--ttl", type=int, default=None, help="expiration_ttl in seconds (at least 60)")
    put.add_argument("--expiration", type=int, default=None, help="expiry as seconds since the epoch")
    put.add_argument("--metadata", default=None, help="metadata as JSON (at most 1024 bytes)")
    put.set_defaults(func=_put)
    delete = kv.add_parser("delete", help="delete a key")
    delete.add_argument("key")
    delete.set_defaults(func=_delete)
    listing = kv.add_parser("list", help="list keys as JSON (every page)")
    listing.add_argument("--prefix", default="")
    listing.set_defaults(func=_list)
    for command in (get, put, delete, listing):
        _common(command)


def _common(p: argparse.ArgumentParser) -> None:
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--binding", default=None, help="the binding name of a kv_namespaces entry")
    which.add_argument("--namespace-id", dest="namespace_id", default=None, help="the namespace's id")
    p.add_argument("--app", default=".", help="the app directory (default: .)")
    p.add_argument("--script", default=None, help="the script whose binding it is (when several bind it)")
    p.add_argument("--state-dir", dest="state_dir", default=None, help="state directory (default: the app's)")
    p.add_argument("--tenant", default=None, help="the tenant's keys, for a tenant-scoped namespace")


def _open(args: argparse.Namespace) -> tuple[Any, str] | int:
    """(store, tenant) or an exit code after printing why."""
    from runtime.bindings.kv import KVStore, namespace_path
    from runtime.commands.storage import find_binding

    state_dir = Path(args.state_dir).resolve() if args.state_dir else None
    namespace_id = args.namespace_id
    if args.binding is not None:
        found = find_binding("kv", args.app, "kv_namespaces", args.binding, args.script,
                             lambda b: b.id, "a KV namespace", "namespaces")
        if isinstance(found, int):
            return found
        app, binding = found
        if binding.tenant_scoped and args.tenant is None:
            print(f"edgeworks kv: {args.binding} is tenant-scoped; name the tenant with --tenant", file=sys.stderr)
            return 2
        if not binding.tenant_scoped and args.tenant is not None:
            print(f"edgeworks kv: {args.binding} is not tenant-scoped (no --tenant)", file=sys.stderr)
            return 2
        namespace_id = binding.id
        state_dir = state_dir or app.state_dir
    state_dir = state_dir or Path(".edgeworks").resolve()
    return KVStore(namespace_path(state_dir, namespace_id)), args.tenant or ""


def _run(args: argparse.Namespace, work: Any) -> int:
    from runtime.bindings.kv import KVError

    opened = _open(args)
    if isinstance(opened, int):
        return opened
    store, tenant = opened
    try:
        return int(work(store, tenant))
    except KVError as e:
        print(f"edgeworks kv: {e}", file=sys.stderr)
        return 1
    finally:
        store.close()


def _get(args: argparse.Namespace) -> int:
    from runtime.bindings.kv import check_key

    def work(store: Any, tenant: str) -> int:
        found = store.get(tenant, check_key(args.key), time.time())
        if found is None:
            print(f"edgeworks kv: no key {args.key!r}", file=sys.stderr)
            return 1
        value, metadata, expiration = found
        if args.metadata:
            print(json.dumps({"value": value.decode("utf-8", errors="replace"),
                              "metadata": None if metadata is None else json.loads(metadata),
                              "expiration": expiration}))
        else:
            sys.stdout.buffer.write(value)
            sys.stdout.buffer.flush()
        return 0

    return _run(args, work)


def _put(args: argparse.Namespace) -> int:
    from runtime.bindings.kv import KVError, checked_put

    def work(store: Any, tenant: str) -> int:
        if (args.value is None) == (args.path is None):
            raise KVError("give the value or --path FILE, one of them")
        value = Path(args.path).read_bytes() if args.path is not None else args.value
        try:
            metadata = None if args.metadata is None else json.loads(args.metadata)
        except ValueError as e:
            raise KVError(f"--metadata is not JSON: {e}") from None
        store.put(tenant, *checked_put(args.key, value, args.expiration, args.ttl, metadata, time.time()))
        return 0

    return _run(args, work)


def _delete(args: argparse.Namespace) -> int:
    from runtime.bindings.kv import check_key

    return _run(args, lambda store, tenant: store.delete(tenant, check_key(args.key)) or 0)


def _list(args: argparse.Namespace) -> int:
    from runtime.bindings.kv import MAX_LIST_LIMIT

    def work(store: Any, tenant: str) -> int:
        keys: list[dict[str, Any]] = []
        after = None
        while True:
            page = store.list(tenant, args.prefix, MAX_LIST_LIMIT, after, time.time())
            keys += page["keys"]
            if page["list_complete"]:
                break
            after = keys[-1]["name"]
        print(json.dumps(keys, indent=2))
        return 0

    return _run(args, work)
