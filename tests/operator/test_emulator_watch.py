"""The emulator's watch resumes as the API server's does: every event after a version, in order.

kopf resumes a dropped watch from the last resourceVersion it saw.  An emulator that
replays a snapshot in storage order (or drops DELETED events) loses events when a watch is
cut mid-replay, and the operator then acts on a stale object for ever: the chaos suite
saw jobs held Queued by a namespace slot that a finished job's stale "Running" took.
"""

from __future__ import annotations

import json

import aiohttp
import kmock

from tests.fixtures.kube_emulator import StrictKubernetesEmulator

CONFIGMAPS = "/api/v1/namespaces/ns/configmaps"
MERGE = {"Content-Type": "application/merge-patch+json"}


async def watch_events(session: aiohttp.ClientSession, since: str, count: int) -> list[dict]:
    """The first ``count`` events of a watch from ``since`` (a timeout when fewer come)."""
    events: list[dict] = []
    params = {"watch": "true", "resourceVersion": since}
    async with session.get(CONFIGMAPS, params=params, timeout=aiohttp.ClientTimeout(total=10)) as response:
        async for line in response.content:
            if line.strip():
                events.append(json.loads(line))
            if len(events) == count:
                break
    return events


async def change(
    session: aiohttp.ClientSession, method: str, name: str = "", body: dict | None = None
) -> None:
    url = f"{CONFIGMAPS}/{name}" if name else CONFIGMAPS
    async with session.request(method, url, json=body, headers=MERGE if method == "PATCH" else None) as r:
        assert r.status in (200, 201), await r.text()


async def test_a_resumed_watch_replays_every_later_event_in_order_deletions_included():
    async with (
        StrictKubernetesEmulator() as kube,
        kmock.Server(kube),
        aiohttp.ClientSession(str(kube.url)) as session,
    ):
        kube.resources.load_bundled()
        for name in ("a", "b", "c"):
            await change(session, "POST", body={"metadata": {"name": name}, "data": {"v": "0"}})
        async with session.get(CONFIGMAPS) as response:
            listed = (await response.json())["metadata"]["resourceVersion"]
        # Changed in an order unlike the order they are stored in: c, then a, then b goes.
        await change(session, "PATCH", "c", {"data": {"v": "1"}})
        await change(session, "PATCH", "a", {"data": {"v": "1"}})
        await change(session, "DELETE", "b")

        events = await watch_events(session, listed, 3)

        seen = [(e["type"], e["object"]["metadata"]["name"]) for e in events]
        assert seen == [("MODIFIED", "c"), ("MODIFIED", "a"), ("DELETED", "b")]
        versions = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
        assert versions == sorted(versions) and versions[0] > int(listed)
        # Cut after the first event, a watch resumed from it still gets the other two.
        resumed = await watch_events(session, str(versions[0]), 2)
        assert [e["object"]["metadata"]["name"] for e in resumed] == ["a", "b"]


async def test_a_version_older_than_the_cache_is_gone():
    async with (
        StrictKubernetesEmulator(history_limit=2) as kube,
        kmock.Server(kube),
        aiohttp.ClientSession(str(kube.url)) as session,
    ):
        kube.resources.load_bundled()
        await change(session, "POST", body={"metadata": {"name": "a"}})
        async with session.get(CONFIGMAPS) as response:
            listed = (await response.json())["metadata"]["resourceVersion"]
        for v in "123":
            await change(session, "PATCH", "a", {"data": {"v": v}})

        (event,) = await watch_events(session, listed, 1)

        assert event["type"] == "ERROR" and event["object"]["code"] == 410
