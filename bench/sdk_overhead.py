"""Benchmark what ``App.request()`` adds to a provider call: vault round trip, signing,
injection and the post-call audit row, against a direct ``httpx`` call to the same endpoint.

Method
------
1. A throw-away vault is prepared through the real CLI (embedded SQLite by default, or
   ``--database-url``): an app, an API key, a custom bearer secret allowed to reach the local
   endpoint, and a system grant on it.
2. Two processes are started: ``grantvault serve`` (``GRANTVAULT_LOG_LEVEL=WARNING``) and a
   local HTTP endpoint (a threaded keep-alive ``http.server`` that answers 200 with a
   small JSON body), so neither competes with the measuring process for its GIL.
3. In one run, on one event loop, this process rotates three ways of making the same
   ``GET`` ``--requests`` times (after ``--warmup`` discarded rounds): **direct**, a call with
   an ``httpx.AsyncClient`` that already holds a keep-alive connection; **floor**, the least
   any client of the protocol must do (one signed ``/sdk/token`` call with a bare
   ``httpx`` client, then the provider call with the bearer token); and **vault**,
   ``request()`` through an ``App`` (same endpoint, ``grant_id`` of the system grant).
   Rotating cancels drift: the series see the same machine state.
4. Each latency is ``perf_counter`` around the awaited call. The report prints p50, p90 and
   p99 of each series, the added latency (vault minus direct) at p50 and p99, and the part of
   it due to the SDK's own code (vault minus floor), against the target of at most 1 ms added at p50 on loopback. The ``App``'s background audit rows
   (one per call, sent after the call returns) are drained at the end by ``close()``.

Caveat: client, vault and endpoint share the machine's cores (``nproc`` is printed); the
vault's own work per retrieval (key lookup, signature check, nonce insert, grant lookup,
decryption, audit write) is part of what ``request()`` adds, by design.

Usage::

    python bench/sdk_overhead.py [--requests 2000] [--warmup 200] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx

from grantvault import App
from grantvault.protocol.signing import sign_request

TARGET_P50_MS = 1.0
READY_TIMEOUT_SECONDS = 30.0

ENDPOINT_CODE = r"""
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BODY = json.dumps({"ok": True, "items": list(range(10))}).encode()

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed ACK

    def do_GET(self):
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, *args):
        pass

ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""


def log(message: str) -> None:
    """Progress goes to stderr so that stdout carries only the report (or the JSON)."""
    print(message, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def run_cli(args: list[str], env: Mapping[str, str], stdin: str | None = None) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "grantvault_server", *args],
        env=dict(env),
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"grantvault {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
    return proc.stdout


def run_cli_json(args: list[str], env: Mapping[str, str]) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(run_cli([*args, "--json"], env))
    return data


def prepare_vault(env: Mapping[str, str], endpoint_port: int) -> tuple[str, str]:
    """App, key, a bearer secret for the local endpoint, and a system grant: (key, grant)."""
    run_cli_json(["apps", "create", "bench-sdk"], env)
    key = run_cli_json(["keys", "create", "--app", "bench-sdk"], env)["api_key"]
    secret = run_cli_json(
        ["secrets", "create", "--app", "bench-sdk", "--slug", "local", "--auth", "bearer",
         "--allowed-host", f"127.0.0.1:{endpoint_port}"],
        env,
    )  # fmt: skip
    run_cli(["secrets", "set-credential", secret["managed_secret_id"], "--stdin"], env,
            stdin="bench-token-not-a-secret-0000")  # fmt: skip
    grant = run_cli_json(["grants", "create", "--secret", secret["managed_secret_id"]], env)
    return str(key), str(grant["grant_id"])


@contextlib.contextmanager
def process(cmd: list[str], env: Mapping[str, str], log_path: Path) -> Iterator[None]:
    with log_path.open("wb") as handle:
        proc = subprocess.Popen(cmd, env=dict(env), stdout=handle, stderr=subprocess.STDOUT)
    try:
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


def wait_for(url: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {READY_TIMEOUT_SECONDS:.0f}s")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


async def floor_call(
    vault_client: httpx.AsyncClient, plain: httpx.AsyncClient, api_key: str, grant_id: str, url: str
) -> None:
    """The protocol's floor: one signed ``/sdk/token`` call, then the provider call (no
    validation, injection rules, audit row or error mapping)."""
    body = json.dumps(
        {"grant_id": grant_id, "reason": None, "request": {"method": "GET", "url": url}},
        separators=(",", ":"),
    ).encode()
    headers = sign_request(api_key, method="POST", target="/sdk/token", body=body)
    headers.update({"x-api-key": api_key, "Content-Type": "application/json"})
    answer = await vault_client.post("/sdk/token", content=body, headers=headers)
    token = answer.json()["access_token"]
    response = await plain.get(url, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200


async def measure(
    base_url: str, api_key: str, grant_id: str, url: str, requests: int, warmup: int
) -> dict[str, list[float]]:
    series: dict[str, list[float]] = {"direct": [], "floor": [], "vault": []}
    async with (
        httpx.AsyncClient() as plain,
        httpx.AsyncClient(base_url=base_url) as vault_client,
        App(api_key, base_url=base_url) as app,
    ):
        for i in range(warmup + requests):
            started = time.perf_counter()
            response = await plain.get(url)
            direct_ms = (time.perf_counter() - started) * 1000
            assert response.status_code == 200
            started = time.perf_counter()
            await floor_call(vault_client, plain, api_key, grant_id, url)
            floor_ms = (time.perf_counter() - started) * 1000
            started = time.perf_counter()
            response = await app.request("GET", url, grant_id=grant_id)
            vault_ms = (time.perf_counter() - started) * 1000
            assert response.status_code == 200
            if i >= warmup:
                series["direct"].append(direct_ms)
                series["floor"].append(floor_ms)
                series["vault"].append(vault_ms)
        drain_started = time.perf_counter()
    log(f"audit rows drained at close in {(time.perf_counter() - drain_started) * 1000:.0f} ms")
    return series


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--database-url", help="PostgreSQL URL (default: embedded SQLite)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="gv-bench-sdk-") as tmp:
        tmp_path = Path(tmp)
        env = {k: v for k, v in os.environ.items() if not k.startswith("GRANTVAULT_")}
        vault_port, endpoint_port = free_port(), free_port()
        env.update(
            GRANTVAULT_DATA_DIR=str(tmp_path / "data"),
            GRANTVAULT_LOG_LEVEL="WARNING",
            GRANTVAULT_PORT=str(vault_port),
            GRANTVAULT_ALLOW_HTTP_HOSTS='["127.0.0.1"]',
        )
        if args.database_url:
            env["GRANTVAULT_DATABASE_URL"] = args.database_url
            run_cli(["db", "upgrade"], env)
        log("preparing the vault through the CLI ...")
        api_key, grant_id = prepare_vault(env, endpoint_port)
        endpoint = f"http://127.0.0.1:{endpoint_port}/v1/items"
        base_url = f"http://127.0.0.1:{vault_port}"
        with (
            process([sys.executable, "-c", ENDPOINT_CODE, str(endpoint_port)], env,
                    tmp_path / "endpoint.log"),
            process([sys.executable, "-m", "grantvault_server", "serve"], env,
                    tmp_path / "vault.log"),
        ):  # fmt: skip
            wait_for(endpoint)
            wait_for(f"{base_url}/readyz")
            log(f"measuring {args.requests} pairs after {args.warmup} warm-up pairs ...")
            series = asyncio.run(
                measure(base_url, api_key, grant_id, endpoint, args.requests, args.warmup)
            )

    report: dict[str, Any] = {"cores": os.cpu_count(), "requests": args.requests}
    for name, values in series.items():
        report[name] = {
            "p50_ms": round(percentile(values, 50), 3),
            "p90_ms": round(percentile(values, 90), 3),
            "p99_ms": round(percentile(values, 99), 3),
            "mean_ms": round(statistics.fmean(values), 3),
        }
    added_p50 = report["vault"]["p50_ms"] - report["direct"]["p50_ms"]
    added_p99 = report["vault"]["p99_ms"] - report["direct"]["p99_ms"]
    report["added_p50_ms"] = round(added_p50, 3)
    report["added_p99_ms"] = round(added_p99, 3)
    report["sdk_over_floor_p50_ms"] = round(
        report["vault"]["p50_ms"] - report["floor"]["p50_ms"], 3
    )
    report["target_p50_ms"] = TARGET_P50_MS
    report["meets_target"] = added_p50 <= TARGET_P50_MS
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"SDK overhead on loopback ({report['cores']} cores, {args.requests} pairs)")
    print(f"{'':10}{'p50 ms':>10}{'p90 ms':>10}{'p99 ms':>10}{'mean ms':>10}")
    for name in ("direct", "floor", "vault"):
        row = report[name]
        print(
            f"{name:10}{row['p50_ms']:>10.3f}{row['p90_ms']:>10.3f}"
            f"{row['p99_ms']:>10.3f}{row['mean_ms']:>10.3f}"
        )
    verdict = "meets" if report["meets_target"] else "MISSES"
    print(f"added by request(): p50 {added_p50:.3f} ms, p99 {added_p99:.3f} ms")
    print(
        f"of which the SDK's own code (vault - floor) at p50: "
        f"{report['sdk_over_floor_p50_ms']:.3f} ms; the rest is the vault round trip"
    )
    print(f"target: <= {TARGET_P50_MS} ms added at p50 -> {verdict} the target")
    return 0


if __name__ == "__main__":
    sys.exit(main())
