"""Benchmark token refresh under a thundering herd: 100 concurrent callers, one expired grant.

Method
------
1. The real OIDC peer (``tests/oauth_peer``, oidc-provider with refresh-token rotation and
   reuse detection) is started on a free port; a vault is started in-process on a fresh
   SQLite file (``--backend postgresql`` uses a fresh database on the local PostgreSQL).
2. An app registers the peer as a custom OIDC provider and one end user connects through the
   hosted pages (a browser played over HTTP), giving one OAuth grant.
3. **Baseline** (same run): ``--callers`` concurrent signed ``POST /sdk/token`` calls for that
   grant while its access token is fresh. Latency per call is recorded.
4. **Expired**: the grant's access token is marked expired in the database, then the same
   ``--callers`` concurrent calls are made. The peer's log is read afterwards: every
   ``refresh_token`` grant it answered is one refresh that reached the provider.
5. Steps 3-4 repeat ``--rounds`` times. Printed: refreshes per round (must be 1), whether
   every caller got the same new token and a 200, and p50/p99 latency of both phases with
   the added latency (expired p50 minus fresh p50).

Run from the repository root: ``python bench/refresh.py`` (``--json`` for one JSON object).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import sqlalchemy as sa  # noqa: E402
from tests.conftest import SignedClient, new_master_key  # noqa: E402
from tests.oauth_flow import approve, browser_for, register_peer  # noqa: E402
from tests.peer import VAULT_BASE_URL, start_peer  # noqa: E402

from grantvault_server.app import create_app  # noqa: E402
from grantvault_server.config import Settings  # noqa: E402
from grantvault_server.services import apps as app_service  # noqa: E402
from grantvault_server.services.vault import Vault  # noqa: E402
from grantvault_server.services.vault_time import utcnow  # noqa: E402
from grantvault_server.storage.tables import oauth_tokens  # noqa: E402


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def timed(signed: SignedClient, body: dict[str, Any]) -> tuple[float, httpx.Response]:
    start = time.perf_counter()
    r = await signed.post("/sdk/token", body)
    return (time.perf_counter() - start) * 1000, r


async def run(args: argparse.Namespace) -> dict[str, Any]:
    peer = start_peer(PEER_ACCESS_TOKEN_TTL=3600, PEER_LOG=1)
    tmp = tempfile.TemporaryDirectory()
    pg_name = None
    try:
        if args.backend == "postgresql":
            import asyncpg

            pg_name = f"gv_bench_{int(time.time())}"
            admin = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/postgres")
            await admin.execute(f'CREATE DATABASE "{pg_name}"')
            await admin.close()
            url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{pg_name}"
        else:
            url = f"sqlite:///{tmp.name}/grantvault.db"
        settings = Settings(
            data_dir=Path(tmp.name) / "data",
            database_url=url,
            master_key=new_master_key(),  # type: ignore[arg-type]
            allow_http_hosts=["127.0.0.1"],
            public_base_url=VAULT_BASE_URL,
            log_level="WARNING",
        )
        vault = await Vault.start(settings, migrate_schema=True)
        asgi = create_app(vault=vault)
        app, key = await app_service.register_app(vault, "bench", {"type": "operator"}), None
        _, key = await app_service.create_key(vault, app, {"type": "operator"})
        await register_peer(vault, app, peer)
        transport = httpx.ASGITransport(app=asgi)
        async with (
            httpx.AsyncClient(transport=transport, base_url="http://testserver") as api,
            browser_for(asgi) as browser,
        ):
            signed = SignedClient(api, key)
            r = await signed.post("/sdk/oauth/connect/session", {"allowed_providers": ["peer"]})
            session = r.json()
            await approve(browser, session["connect_url"], user="bench")
            polled = await signed.post(
                "/sdk/oauth/connect/session/poll", {"session_token": session["session_token"]}
            )
            grant_id = polled.json()["grants"][0]["grant_id"]
            body = {
                "grant_id": grant_id,
                "reason": None,
                "request": {"method": "GET", "url": f"{peer.issuer}/api/whoami"},
            }
            rounds = []
            for n in range(args.rounds):
                print(f"round {n + 1}/{args.rounds}", file=sys.stderr)
                fresh = await asyncio.gather(*(timed(signed, body) for _ in range(args.callers)))
                assert all(r.status_code == 200 for _, r in fresh)
                before = len(
                    [
                        e
                        for e in peer.log_events("grant.success")
                        if e.get("grant_type") == "refresh_token"
                    ]
                )
                async with vault.db.write() as conn:
                    await conn.execute(
                        sa.update(oauth_tokens)
                        .where(oauth_tokens.c.grant_id == grant_id)
                        .values(access_expires_at=utcnow() - timedelta(seconds=1))
                    )
                expired = await asyncio.gather(*(timed(signed, body) for _ in range(args.callers)))
                await asyncio.sleep(0.2)  # let the peer's log line arrive
                after = len(
                    [
                        e
                        for e in peer.log_events("grant.success")
                        if e.get("grant_type") == "refresh_token"
                    ]
                )
                fresh_ms = [t for t, _ in fresh]
                expired_ms = [t for t, _ in expired]
                rounds.append(
                    {
                        "refreshes_at_provider": after - before,
                        "all_ok": all(r.status_code == 200 for _, r in expired),
                        "distinct_tokens": len({r.json().get("access_token") for _, r in expired}),
                        "reuse_errors": len(peer.log_events("grant.error")),
                        "fresh_p50_ms": round(statistics.median(fresh_ms), 2),
                        "fresh_p99_ms": round(pct(fresh_ms, 0.99), 2),
                        "expired_p50_ms": round(statistics.median(expired_ms), 2),
                        "expired_p99_ms": round(pct(expired_ms, 0.99), 2),
                    }
                )
            # One caller at a time: what a refresh adds to the retrieval that triggers it.
            single_fresh: list[float] = []
            single_expired: list[float] = []
            for _ in range(args.singles):
                t, r = await timed(signed, body)
                assert r.status_code == 200
                single_fresh.append(t)
                async with vault.db.write() as conn:
                    await conn.execute(
                        sa.update(oauth_tokens)
                        .where(oauth_tokens.c.grant_id == grant_id)
                        .values(access_expires_at=utcnow() - timedelta(seconds=1))
                    )
                t, r = await timed(signed, body)
                assert r.status_code == 200
                single_expired.append(t)
        await vault.close()
    finally:
        peer.stop()
        tmp.cleanup()
        if pg_name:
            import asyncpg

            admin = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/postgres")
            await admin.execute(f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)')
            await admin.close()
    fresh_p50 = statistics.median(r["fresh_p50_ms"] for r in rounds)
    expired_p50 = statistics.median(r["expired_p50_ms"] for r in rounds)
    one_fresh = statistics.median(single_fresh)
    one_expired = statistics.median(single_expired)
    return {
        "single_caller": {
            "fresh_p50_ms": round(one_fresh, 2),
            "expired_p50_ms": round(one_expired, 2),
            "added_p50_ms": round(one_expired - one_fresh, 2),
            "ratio": round(one_expired / one_fresh, 2),
        },
        "backend": args.backend,
        "callers": args.callers,
        "rounds": rounds,
        "refreshes_per_round": [r["refreshes_at_provider"] for r in rounds],
        "fresh_p50_ms": fresh_p50,
        "expired_p50_ms": expired_p50,
        "added_p50_ms": round(expired_p50 - fresh_p50, 2),
        "ratio_expired_to_fresh_p50": round(expired_p50 / fresh_p50, 2) if fresh_p50 else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--callers", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--singles", type=int, default=30, help="single-caller refreshes to time")
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"{args.callers} concurrent callers on one expired grant ({args.backend}), {args.rounds} rounds"
    )
    print(
        f"  refreshes that reached the provider per round: {result['refreshes_per_round']} (must be 1)"
    )
    print(
        f"  all callers answered 200 with one shared new token: "
        f"{all(r['all_ok'] and r['distinct_tokens'] == 1 for r in result['rounds'])}"
    )
    print(
        f"  herd latency p50: fresh {result['fresh_p50_ms']} ms, expired "
        f"{result['expired_p50_ms']} ms (queueing of {args.callers} in-flight calls dominates)"
    )
    one = result["single_caller"]
    print(
        f"  one caller: fresh-token retrieval p50 {one['fresh_p50_ms']} ms (baseline, same run), "
        f"retrieval that refreshes p50 {one['expired_p50_ms']} ms"
    )
    print(f"  added latency of a refresh at p50: {one['added_p50_ms']} ms (x{one['ratio']})")


if __name__ == "__main__":
    main()
