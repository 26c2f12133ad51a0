"""Release every ApiService from the operator before (or after) it goes: nothing hangs.

kopf keeps a finalizer on each ApiService; without the operator, deleting one (or its
namespace) would wait forever. `python -m regatta.operator.uninstall` is the chart's
post-delete hook: with the operator gone it removes that finalizer from every ApiService it
can see. The ApiServices and their children keep running; deleting one later is immediate, and
Kubernetes deletes its children through their owner references (databases and Redis users are
then left in place). `--delete` deletes the ApiServices first, for an operator still running
(`kubectl delete apiservices --all` does the same), waits for them to go, and then releases
whatever is left.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

from lightkube import AsyncClient, KubeConfig
from lightkube.types import PatchType

from regatta.operator.kube import ApiServiceResource

KOPF_FINALIZER = "kopf.zalando.org/KopfFinalizerMarker"
logger = logging.getLogger(__name__)


async def _api_services(client: AsyncClient, namespace: str) -> list[Any]:
    return [item async for item in client.list(ApiServiceResource, namespace=namespace)]


async def _until_gone(
    client: AsyncClient, namespace: str, wait_seconds: float, poll_seconds: float
) -> None:
    # The API offers a watch, but a poll of a handful of objects is plenty for a hook.
    deadline = time.monotonic() + wait_seconds
    while time.monotonic() < deadline:
        if not await _api_services(client, namespace):
            return
        await asyncio.sleep(poll_seconds)


async def release(
    client: AsyncClient,
    *,
    namespace: str = "*",
    delete: bool = False,
    wait_seconds: float = 120.0,
    poll_seconds: float = 1.0,
) -> list[str]:
    """Delete (optionally) and un-finalize the ApiServices; returns those released."""
    if delete:
        for item in await _api_services(client, namespace):
            meta = item.metadata
            await client.delete(ApiServiceResource, meta.name, namespace=meta.namespace)
        await _until_gone(client, namespace, wait_seconds, poll_seconds)
    released = []
    for item in await _api_services(client, namespace):
        meta = item.metadata
        finalizers = list(meta.finalizers or [])
        if KOPF_FINALIZER not in finalizers:
            continue
        kept = [f for f in finalizers if f != KOPF_FINALIZER]
        await client.patch(
            ApiServiceResource,
            meta.name,
            {"metadata": {"finalizers": kept or None, "resourceVersion": meta.resourceVersion}},
            namespace=meta.namespace,
            patch_type=PatchType.MERGE,
        )
        released.append(f"{meta.namespace}/{meta.name}")
    return released


def main(argv: Sequence[str] | None = None) -> None:
    """The command line of the chart's uninstall hook."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--namespace", default="*", help="one namespace (default: all)")
    parser.add_argument("--delete", action="store_true", help="delete the ApiServices first")
    parser.add_argument("--wait-seconds", type=float, default=120.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    async def run() -> list[str]:
        client = AsyncClient(config=KubeConfig.from_env())
        try:
            return await release(
                client, namespace=args.namespace, delete=args.delete, wait_seconds=args.wait_seconds
            )
        finally:
            await client.close()

    for name in asyncio.run(run()):
        logger.info("released %s", name)


if __name__ == "__main__":
    main()
