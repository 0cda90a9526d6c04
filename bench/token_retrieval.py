"""Benchmark credential retrieval (``POST /sdk/token``) against a bare FastAPI endpoint.

Method
------
1. A throw-away data dir is created and a vault is prepared in it on the embedded SQLite
   default, through the real CLI (``python -m grantvault_server ...``): an app, an API key,
   an OpenAI-template secret with a fake credential, and a system grant on it.
2. Two servers are started as subprocesses, each single-process uvicorn with the settings
   ``grantvault serve`` uses (``log_config=None``, ``access_log=False``,
   ``server_header=False``, run with ``asyncio.run(Server.serve())``, so both use the stdlib
   event loop and uvicorn's default HTTP parser):

   * **vault**: ``grantvault serve`` with ``GRANTVAULT_LOG_LEVEL=WARNING``;
   * **baseline**: a bare FastAPI app whose ``POST /sdk/token`` reads the JSON body and
     returns a small JSON object. It is the floor: what one uvicorn process does when the
     vault's work (key lookup, signature, nonce insert, grant lookup, decryption, audit
     write) is taken away.

3. This process is the load generator: ``--concurrency`` asyncio workers send requests back
   to back over keep-alive connections for ``--duration`` seconds, after a 2 s warm-up whose
   results are discarded. By default each worker has its own ``httpx.AsyncClient`` with one
   connection (``--pool per-worker``); ``--pool shared`` uses one client whose pool holds
   ``--concurrency`` connections, which is simpler but costs the client several times more
   CPU per request (httpcore rescans its whole pool on every request), and the client is
   already the scarce side. The client runs on uvloop when installed (``--no-client-uvloop``
   to disable); this changes nothing on the servers.
   Every request, to either target, is built exactly like the SDK's: a compact-JSON body and
   a fresh signature (new nonce) from ``grantvault._signing.sign_request``, so the client
   does the same work for both targets. Latency is the HTTP round trip as seen by the
   client (signing excluded), for 200 responses only; anything else is an error, counted
   per status code with sample bodies.
4. Order: baseline, vault, then (by default) baseline again; the two baseline runs are
   averaged to cancel drift. The verdict compares against the issue's targets:
   >= 3000 retrievals/s and vault/baseline >= 0.25.
5. After the servers stop, the audit table is counted directly in SQLite: every successful
   retrieval (warm-up included) must have written one ``credential.retrieved`` row, which
   shows the measured figure includes the audit write.

Caveat: the load generator runs on the same machine as the server under test and competes
with it for CPU (the output reports the core count and each side's CPU use, 100% = one
core). The figures are therefore lower bounds for a server with the machine to itself. A
phase in which the server used less than 75% of its one core is flagged "not saturated":
the limit was elsewhere (in practice the load generator), so its req/s understates the
server's capacity. An unsaturated baseline is underestimated, which makes the ratio an upper
bound of the true one.

Run from the repository root::

    python bench/token_retrieval.py [--duration 10] [--concurrency 32] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from grantvault._signing import sign_request

WARMUP_SECONDS = 2.0
TARGET_RPS = 3000.0
TARGET_RATIO = 0.25
TOKEN_PATH = "/sdk/token"
DESTINATION_URL = "https://api.openai.com/v1/chat/completions"
READY_TIMEOUT_SECONDS = 30.0
REQUEST_TIMEOUT_SECONDS = 60.0
MAX_SAMPLE_BODIES = 3
# A single-process server using less of its one core than this was not the bottleneck.
SATURATED_CPU_PCT = 75.0

# The baseline server: same uvicorn settings and start-up path as `grantvault serve`.
BASELINE_APP = textwrap.dedent(
    """
    import asyncio
    import sys

    import uvicorn
    from fastapi import FastAPI, Request

    app = FastAPI()


    @app.get("/readyz")
    async def readyz() -> dict[str, str]:
        return {"status": "ready"}


    @app.post("/sdk/token")
    async def token(request: Request) -> dict[str, object]:
        body = await request.json()
        return {"ok": True, "grant_id": body.get("grant_id")}


    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        log_config=None,
        access_log=False,
        server_header=False,
    )
    asyncio.run(uvicorn.Server(config).serve())
    """
)


# -- results -----------------------------------------------------------------------------


@dataclass
class PhaseResult:
    """What one load phase against one target produced."""

    target: str
    elapsed: float = 0.0
    ok: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    error_bodies: dict[str, list[str]] = field(default_factory=dict)
    client_cpu_pct: float | None = None
    server_cpu_pct: float | None = None

    @property
    def errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status != "200")

    @property
    def rps(self) -> float:
        return self.ok / self.elapsed if self.elapsed else 0.0

    def percentile(self, pct: float) -> float | None:
        if not self.latencies_ms:
            return None
        ordered = sorted(self.latencies_ms)
        rank = max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered)) - 1))
        return ordered[rank]

    def record_error(self, status: str, body: str) -> None:
        self.statuses[status] += 1
        samples = self.error_bodies.setdefault(status, [])
        body = body[:500]
        if len(samples) < MAX_SAMPLE_BODIES and body not in samples:
            samples.append(body)

    def summary(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "seconds": round(self.elapsed, 3),
            "ok": self.ok,
            "rps": round(self.rps, 1),
            "p50_ms": _round(self.percentile(50)),
            "p99_ms": _round(self.percentile(99)),
            "errors": self.errors,
            "statuses": dict(self.statuses),
            "error_bodies": self.error_bodies,
            "client_cpu_pct": _round(self.client_cpu_pct),
            "server_cpu_pct": _round(self.server_cpu_pct),
            "server_saturated": self.server_saturated,
        }

    @property
    def server_saturated(self) -> bool | None:
        """Did the server use (nearly) all of its one core? None when unknown."""
        if self.server_cpu_pct is None:
            return None
        return self.server_cpu_pct >= SATURATED_CPU_PCT


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


# -- processes ----------------------------------------------------------------------------


def log(message: str) -> None:
    """Progress goes to stderr so that stdout carries only the report (or the JSON)."""
    print(message, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def vault_env(data_dir: Path) -> dict[str, str]:
    """The caller's environment without any GRANTVAULT_* setting, plus ours."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRANTVAULT_")}
    env["GRANTVAULT_DATA_DIR"] = str(data_dir)
    env["GRANTVAULT_LOG_LEVEL"] = "WARNING"
    return env


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


@dataclass(frozen=True)
class Fixture:
    api_key: str
    grant_id: str


def prepare_vault(env: Mapping[str, str]) -> Fixture:
    """App, key, secret with a fake credential, and a system grant, through the CLI."""
    run_cli_json(["apps", "create", "bench"], env)
    key = run_cli_json(["keys", "create", "--app", "bench"], env)
    secret = run_cli_json(["secrets", "create", "--app", "bench", "--template", "openai"], env)
    secret_id = secret["managed_secret_id"]
    run_cli(
        ["secrets", "set-credential", secret_id, "--stdin"],
        env,
        stdin="sk-bench-not-a-real-key-0000000000000000",
    )
    grant = run_cli_json(["grants", "create", "--secret", secret_id, "--principal", "system"], env)
    return Fixture(api_key=key["api_key"], grant_id=grant["grant_id"])


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    base_url: str
    log_path: Path

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


@contextlib.contextmanager
def running_server(
    name: str, cmd: list[str], port: int, env: Mapping[str, str], log_dir: Path
) -> Iterator[Server]:
    """Start ``cmd``, wait for ``GET /readyz`` to answer 200, and always stop it afterwards."""
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            cmd, env=dict(env), stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    server = Server(name, proc, f"http://127.0.0.1:{port}", log_path)
    try:
        wait_ready(server)
        yield server
    finally:
        stop(proc)


def wait_ready(server: Server) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(
                f"{server.name} exited with {server.proc.returncode}:\n{server.log_tail()}"
            )
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{server.base_url}/readyz", timeout=1.0).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(
        f"{server.name} not ready after {READY_TIMEOUT_SECONDS}s:\n{server.log_tail()}"
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of ``pid`` (Linux /proc; None elsewhere)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    # After the command name: state is field 3, utime 14 and stime 15 (1-based, man 5 proc).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- load ---------------------------------------------------------------------------------


def signed_request(api_key: str, grant_id: str) -> tuple[bytes, dict[str, str]]:
    """Body and headers of one ``POST /sdk/token``, exactly as the SDK builds them."""
    payload = {
        "grant_id": grant_id,
        "reason": None,
        "request": {"method": "POST", "url": DESTINATION_URL},
    }
    body = json.dumps(payload, separators=(",", ":")).encode()
    headers = sign_request(api_key, method="POST", target=TOKEN_PATH, body=body)
    headers["x-api-key"] = api_key
    headers["Content-Type"] = "application/json"
    return body, headers


async def load_phase(
    clients: list[httpx.AsyncClient],
    server: Server,
    fixture: Fixture,
    *,
    duration: float,
    concurrency: int,
) -> PhaseResult:
    """``concurrency`` workers send signed requests back to back for ``duration`` seconds.

    Worker ``i`` sends through ``clients[i % len(clients)]``.
    """
    result = PhaseResult(server.name)
    url = f"{server.base_url}{TOKEN_PATH}"
    deadline = time.perf_counter() + duration

    async def worker(client: httpx.AsyncClient) -> None:
        while time.perf_counter() < deadline:
            body, headers = signed_request(fixture.api_key, fixture.grant_id)
            start = time.perf_counter()
            try:
                response = await client.post(url, content=body, headers=headers)
            except httpx.HTTPError as exc:
                result.record_error(f"exception:{type(exc).__name__}", str(exc))
                continue
            elapsed_ms = (time.perf_counter() - start) * 1000
            if response.status_code == 200:
                result.ok += 1
                result.statuses["200"] += 1
                result.latencies_ms.append(elapsed_ms)
            else:
                result.record_error(str(response.status_code), response.text)

    server_cpu_before = process_cpu_seconds(server.proc.pid)
    client_cpu_before = time.process_time()
    started = time.perf_counter()
    await asyncio.gather(*(worker(clients[i % len(clients)]) for i in range(concurrency)))
    result.elapsed = time.perf_counter() - started
    result.client_cpu_pct = 100 * (time.process_time() - client_cpu_before) / result.elapsed
    server_cpu_after = process_cpu_seconds(server.proc.pid)
    if server_cpu_before is not None and server_cpu_after is not None:
        result.server_cpu_pct = 100 * (server_cpu_after - server_cpu_before) / result.elapsed
    return result


async def measure(
    server: Server, fixture: Fixture, *, duration: float, concurrency: int, pool: str
) -> tuple[PhaseResult, PhaseResult]:
    """Warm up for WARMUP_SECONDS, then measure; return (warm-up, measured).

    ``pool="shared"``: one client whose pool holds ``concurrency`` connections.
    ``pool="per-worker"``: one client (one keep-alive connection) per worker; the same number
    of connections, but httpcore's pool bookkeeping, which grows with the number of
    connections and waiting requests on every request, stays constant.
    """
    size = concurrency if pool == "shared" else 1
    limits = httpx.Limits(max_connections=size, max_keepalive_connections=size)
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(
                httpx.AsyncClient(limits=limits, timeout=REQUEST_TIMEOUT_SECONDS)
            )
            for _ in range(1 if pool == "shared" else concurrency)
        ]
        warmup = await load_phase(
            clients, server, fixture, duration=WARMUP_SECONDS, concurrency=concurrency
        )
        measured = await load_phase(
            clients, server, fixture, duration=duration, concurrency=concurrency
        )
    return warmup, measured


def client_loop_factory(use_uvloop: bool) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The load generator's event loop (the servers' loop does not depend on it)."""
    if not use_uvloop:
        return None
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def cache_missing_sniffio() -> None:
    """Make httpcore's per-request ``import sniffio`` cheap when sniffio is not installed.

    httpcore imports sniffio each time it creates a lock (several times per request). A failed
    import is not cached, so each one rescans ``sys.path``: about 15% of the load generator's
    CPU here. ``None`` in ``sys.modules`` makes the import fail at once, which is what
    httpcore already handles (it then assumes asyncio), so behaviour is unchanged.
    """
    if importlib.util.find_spec("sniffio") is None:
        sys.modules.setdefault("sniffio", None)  # type: ignore[arg-type]


# -- audit --------------------------------------------------------------------------------


def audit_counts(db_path: Path) -> dict[str, int]:
    """``credential.retrieved`` rows per outcome, read straight from the SQLite file."""
    with contextlib.closing(sqlite3.connect(db_path)) as conn:
        rows = conn.execute(
            "SELECT outcome, count(*) FROM audit_events "
            "WHERE event = 'credential.retrieved' GROUP BY outcome"
        ).fetchall()
    return {str(outcome): int(n) for outcome, n in rows}


# -- report -------------------------------------------------------------------------------


def mean_phase(name: str, phases: list[PhaseResult]) -> dict[str, Any]:
    """Average of several runs of one target (rps, p50, p99, errors)."""
    p50s = [p for p in (r.percentile(50) for r in phases) if p is not None]
    p99s = [p for p in (r.percentile(99) for r in phases) if p is not None]
    return {
        "target": name,
        "ok": sum(r.ok for r in phases),
        "rps": round(statistics.fmean(r.rps for r in phases), 1),
        "p50_ms": _round(statistics.fmean(p50s)) if p50s else None,
        "p99_ms": _round(statistics.fmean(p99s)) if p99s else None,
        "errors": sum(r.errors for r in phases),
        "client_cpu_pct": None,
        "server_cpu_pct": None,
        "server_saturated": _all_saturated(phases),
    }


def _all_saturated(phases: list[PhaseResult]) -> bool | None:
    flags = [r.server_saturated for r in phases]
    return None if None in flags else all(flags)


def _fmt(value: Any, spec: str = "") -> str:
    return "-" if value is None else format(value, spec)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"


def print_report(report: dict[str, Any]) -> None:
    cfg = report["config"]
    print(
        f"POST /sdk/token vs bare FastAPI: {cfg['concurrency']} concurrent workers, "
        f"{cfg['duration_s']:g} s per phase after a {cfg['warmup_s']:g} s warm-up, "
        f"{cfg['cpu_count']} CPU cores; client: httpx ({cfg['pool']} pool) on {cfg['client_loop']}"
    )
    print()
    header = (
        f"{'target':<18} {'ok':>8} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} "
        f"{'client CPU':>11} {'server CPU':>11}"
    )
    print(header)
    print("-" * len(header))
    for row in report["rows"]:
        print(
            f"{row['target']:<18} {row['ok']:>8} "
            f"{_fmt(row['rps'], '.1f') + ('*' if row['server_saturated'] is False else ' '):>10} "
            f"{_fmt(row['p50_ms'], '.2f'):>8} {_fmt(row['p99_ms'], '.2f'):>8} "
            f"{row['errors']:>7} {_pct(row['client_cpu_pct']):>11} {_pct(row['server_cpu_pct']):>11}"
        )
    print()
    verdict = report["verdict"]
    print(
        f"vault / baseline = {verdict['vault_rps']:.1f} / {verdict['baseline_rps']:.1f} "
        f"= {verdict['ratio']:.3f}"
        + (
            " (upper bound: the baseline server was not saturated)"
            if verdict["baseline_saturated"] is False
            else ""
        )
    )
    for check in verdict["checks"]:
        status = "PASS" if check["pass"] else "MISS"
        print(f"  [{status}] {check['name']}: {check['value']} (target {check['target']})")
    print()
    audit = report["audit"]
    match = "equal" if audit["match"] else "MISMATCH"
    print(
        f"audit: {audit['vault_successes']} successful retrievals (warm-up included), "
        f"{audit['rows_success']} credential.retrieved success rows, "
        f"{audit['rows_total']} in total -> {match}"
    )
    for phase in report["phases"]:
        if phase["errors"]:
            print(f"\nerrors in {phase['target']} ({phase['kind']}): {phase['statuses']}")
            for status, bodies in phase["error_bodies"].items():
                for body in bodies:
                    print(f"  {status}: {body}")
    print()
    if any(row["server_saturated"] is False for row in report["rows"]):
        print(
            f"* not saturated: the server used < {SATURATED_CPU_PCT:g}% of its one core, so the "
            "limit was elsewhere (see client CPU) and this req/s understates its capacity."
        )
    print(f"Note: {report['note']}")


def build_report(
    args: argparse.Namespace,
    runs: list[tuple[str, PhaseResult, PhaseResult]],
    audit: dict[str, int],
) -> dict[str, Any]:
    baseline_runs = [m for name, _, m in runs if name == "baseline"]
    vault_runs = [m for name, _, m in runs if name == "vault"]
    rows: list[dict[str, Any]] = []
    baseline_count = 0
    for name, _, measured in runs:
        row = measured.summary()
        if name == "baseline":
            baseline_count += 1
            if len(baseline_runs) > 1:
                row["target"] = f"baseline (run {baseline_count})"
        rows.append(row)
    if len(baseline_runs) > 1:
        rows.append(mean_phase("baseline (mean)", baseline_runs))
    baseline_rps = statistics.fmean(r.rps for r in baseline_runs)
    vault_rps = vault_runs[0].rps
    ratio = vault_rps / baseline_rps if baseline_rps else 0.0
    vault_successes = sum(w.ok + m.ok for name, w, m in runs if name == "vault")
    return {
        "config": {
            "duration_s": args.duration,
            "warmup_s": WARMUP_SECONDS,
            "concurrency": args.concurrency,
            "cpu_count": os.cpu_count(),
            "repeat_baseline": args.repeat_baseline,
            "pool": args.pool,
            "client_loop": args.client_loop,
            "saturated_cpu_pct": SATURATED_CPU_PCT,
        },
        "rows": rows,
        "phases": [
            {"kind": kind, **phase.summary()}
            for _, warm, measured in runs
            for kind, phase in (("warm-up", warm), ("measured", measured))
        ],
        "verdict": {
            "vault_rps": round(vault_rps, 1),
            "baseline_rps": round(baseline_rps, 1),
            "ratio": round(ratio, 4),
            "baseline_saturated": _all_saturated(baseline_runs),
            "checks": [
                {
                    "name": "retrievals/s",
                    "value": round(vault_rps, 1),
                    "target": f">= {TARGET_RPS:g}",
                    "pass": vault_rps >= TARGET_RPS,
                },
                {
                    "name": "vault/baseline ratio",
                    "value": round(ratio, 3),
                    "target": f">= {TARGET_RATIO:g}",
                    "pass": ratio >= TARGET_RATIO,
                },
            ],
        },
        "audit": {
            "vault_successes": vault_successes,
            "rows_success": audit.get("success", 0),
            "rows_total": sum(audit.values()),
            "rows_by_outcome": audit,
            "match": audit.get("success", 0) == vault_successes,
        },
        "note": (
            f"the load generator runs in this process on the same {os.cpu_count()}-core machine "
            "as the servers and competes with them for CPU (CPU columns: 100% = one core). "
            "Each server is a single process (at most one core), so on 2 cores the figures are "
            "lower bounds; an unsaturated baseline makes the ratio an upper bound."
        ),
    }


# -- main ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument(
        "--duration", type=float, default=10.0, help="Seconds measured per phase (default 10)."
    )
    parser.add_argument(
        "--concurrency", type=int, default=32, help="Concurrent client workers (default 32)."
    )
    parser.add_argument(
        "--repeat-baseline",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Measure the baseline again after the vault and average both runs (default on).",
    )
    parser.add_argument(
        "--pool",
        choices=["per-worker", "shared"],
        default="per-worker",
        help="per-worker: one httpx client and connection per worker (default); shared: one "
        "client whose pool holds --concurrency connections (costs the client more CPU).",
    )
    parser.add_argument(
        "--client-uvloop",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Run the load generator on uvloop when installed (default on; servers unaffected).",
    )
    parser.add_argument("--json", action="store_true", help="Print one JSON object.")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.concurrency < 1:
        parser.error("--duration must be > 0 and --concurrency >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cache_missing_sniffio()
    loop_factory = client_loop_factory(args.client_uvloop)
    args.client_loop = "uvloop" if loop_factory is not None else "asyncio"
    with tempfile.TemporaryDirectory(prefix="grantvault-bench-") as tmp:
        data_dir = Path(tmp)
        env = vault_env(data_dir)
        log("preparing the vault (app, key, secret, credential, grant) ...")
        fixture = prepare_vault(env)
        baseline_script = data_dir / "baseline_app.py"
        baseline_script.write_text(BASELINE_APP)

        vault_port, baseline_port = free_port(), free_port()
        vault_cmd = [sys.executable, "-m", "grantvault_server", "serve", "--port", str(vault_port)]
        baseline_cmd = [sys.executable, str(baseline_script), str(baseline_port)]
        order = ["baseline", "vault"] + (["baseline"] if args.repeat_baseline else [])
        runs: list[tuple[str, PhaseResult, PhaseResult]] = []
        with (
            running_server("vault", vault_cmd, vault_port, env, data_dir) as vault,
            running_server("baseline", baseline_cmd, baseline_port, env, data_dir) as baseline,
        ):
            servers = {"vault": vault, "baseline": baseline}
            for name in order:
                log(f"measuring {name}: {WARMUP_SECONDS:g} s warm-up + {args.duration:g} s ...")
                with asyncio.Runner(loop_factory=loop_factory) as runner:
                    warm, measured = runner.run(
                        measure(
                            servers[name],
                            fixture,
                            duration=args.duration,
                            concurrency=args.concurrency,
                            pool=args.pool,
                        )
                    )
                runs.append((name, warm, measured))
        # Both servers have stopped. Every committed audit row is in the database file or its
        # WAL, and sqlite3 reads both.
        audit = audit_counts(data_dir / "grantvault.db")
        report = build_report(args, runs, audit)
    if args.json:
        print(json.dumps(report))
    else:
        print_report(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
