"""More than one machine: real replicas behind the shipped HAProxy config, and the
Kubernetes manifests against the API's schemas.

The balancer test starts two real wyoming-tts processes and Debian's haproxy on
loopback with deploy/haproxy/haproxy.cfg as shipped, only its addresses and stats
socket path changed. It checks what Home Assistant would see through the balancer:
speech from both replicas, a replica stopped with SIGTERM mid-run finishing what it
was serving, and no request failing once the health check has marked it down. A
third backend that answers `describe` with something other than `info` shows the
check is a Wyoming round trip, not an open port.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from wyoming.tts import Synthesize

from wyoming_tts.config import ENV_PREFIX, settings_fields

from .conftest import Response, ServerProcess, assert_speech, connect, free_port, read_until

REPO = Path(__file__).resolve().parents[1]
HAPROXY_CFG = REPO / "deploy" / "haproxy" / "haproxy.cfg"
KUBERNETES = REPO / "deploy" / "kubernetes"
BASE = KUBERNETES / "base"
TOOLS = Path(sys.executable).parent
LONG_TEXT = (
    "The morning was quiet. A light rain fell over the garden, and the kettle began to sing. "
    "Somewhere down the street a dog barked twice, then thought better of it. "
) * 2
#: Grace the replicas get on SIGTERM; the held request below is released well within it.
GRACE = "30"


def haproxy_binary() -> str:
    found = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        pytest.skip("haproxy is not installed (Debian's `haproxy`; .ci/run installs it)")
    return found


def test_shipped_haproxy_config_is_valid() -> None:
    proc = subprocess.run(
        [haproxy_binary(), "-c", "-f", str(HAPROXY_CFG)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = HAPROXY_CFG.read_text()
    for line in ("mode tcp", "balance leastconn", "option tcp-check"):
        assert re.search(rf"^\s*{line}$", text, re.M), line


def balancer_config(port: int, servers: dict[str, int], stats: Path) -> str:
    """The shipped config on loopback: its bind, server and stats socket lines replaced."""
    text = HAPROXY_CFG.read_text()
    text, binds = re.subn(r"^(\s*)bind :10200$", rf"\1bind 127.0.0.1:{port}", text, flags=re.M)
    text, sockets = re.subn(r"stats socket \S+", f"stats socket {stats}", text)
    text, shipped = re.subn(r"^\s*server .*\n", "", text, flags=re.M)
    assert (binds, sockets, shipped) == (1, 1, 2), "the shipped config changed shape"
    assert text.rstrip().splitlines()[-1].strip().startswith("default-server"), "servers go last"
    lines = "".join(f"    server {name} 127.0.0.1:{p} check\n" for name, p in servers.items())
    return text.rstrip() + "\n" + lines


async def server_states(stats: Path) -> dict[str, dict[str, str]]:
    """`show stat` from HAProxy's stats socket: each backend server's row by name."""
    reader, writer = await asyncio.open_unix_connection(str(stats))
    writer.write(b"show stat\n")
    await writer.drain()
    raw = (await reader.read()).decode()
    writer.close()
    await writer.wait_closed()
    header, *rows = [line for line in raw.splitlines() if line]
    names = header.lstrip("# ").split(",")
    states = [dict(zip(names, row.split(","), strict=False)) for row in rows]
    return {s["svname"]: s for s in states if s["pxname"] == "wyoming_tts"}


async def wait_for_states(stats: Path, wanted: dict[str, str], timeout: float = 60) -> None:
    """Until each named server's status starts with the wanted word (UP, DOWN)."""
    states: dict[str, dict[str, str]] = {}
    try:
        async with asyncio.timeout(timeout):
            while True:
                with contextlib.suppress(OSError):
                    states = await server_states(stats)
                    if all(states[n]["status"].startswith(w) for n, w in wanted.items()):
                        return
                await asyncio.sleep(0.2)
    except TimeoutError:
        got = {n: (s["status"], s["check_status"]) for n, s in states.items()}
        raise AssertionError(f"HAProxy never reached {wanted}: {got}") from None


@contextlib.asynccontextmanager
async def impostor() -> AsyncIterator[int]:
    """A TCP service that answers a Wyoming describe with an `error`, not `info`."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            await reader.readline()
            writer.write(b'{"type": "error", "data": {"text": "not a tts"}}\n')
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


@dataclass
class Cluster:
    replicas: dict[str, ServerProcess]
    uri: str
    stats: Path


@pytest.fixture
def replicas(tmp_path: Path, cache_dir: Path) -> Iterator[dict[str, ServerProcess]]:
    haproxy_binary()  # skip before starting anything
    started: dict[str, ServerProcess] = {}
    try:
        for name in ("tts1", "tts2"):
            srv = ServerProcess(["--cache-dir", str(cache_dir), "--shutdown-grace", GRACE])
            srv.start(tmp_path / f"{name}.log")
            started[name] = srv
        yield started
    finally:
        for srv in started.values():
            srv.stop()


@pytest.fixture
async def cluster(tmp_path: Path, replicas: dict[str, ServerProcess]) -> AsyncIterator[Cluster]:
    async with impostor() as impostor_port:
        port, stats = free_port(), tmp_path / "haproxy.sock"
        servers = {name: srv.port for name, srv in replicas.items()} | {"fake": impostor_port}
        cfg = tmp_path / "haproxy.cfg"
        cfg.write_text(balancer_config(port, servers, stats))
        log = (tmp_path / "haproxy.log").open("wb")
        proc = await asyncio.create_subprocess_exec(
            haproxy_binary(), "-db", "-f", str(cfg), stdout=log, stderr=subprocess.STDOUT
        )
        try:
            await wait_for_states(stats, {"tts1": "UP", "tts2": "UP", "fake": "DOWN"})
            yield Cluster(replicas, f"tcp://127.0.0.1:{port}", stats)
        finally:
            proc.terminate()
            await proc.wait()
            log.close()


async def speak(uri: str, text: str) -> Response:
    async with connect(uri) as client:
        await client.write_event(Synthesize(text=text).event())
        return await read_until(client, timeout=60)


async def speak_all(uri: str, texts: list[str], concurrency: int = 4) -> list[Response]:
    gate = asyncio.Semaphore(concurrency)

    async def one(text: str) -> Response:
        async with gate:
            return await speak(uri, text)

    return await asyncio.gather(*(one(t) for t in texts))


def served(srv: ServerProcess) -> int:
    """Requests the replica answered in full, from its one log line per request."""
    return srv.log().count("outcome=ok")


async def wait_served(replicas: dict[str, ServerProcess], total: int) -> dict[str, int]:
    """Each request's log line is written as it ends, just after its audio-stop."""
    async with asyncio.timeout(30):
        while True:
            counts = {name: served(srv) for name, srv in replicas.items()}
            if sum(counts.values()) >= total:
                return counts
            await asyncio.sleep(0.1)


def sentence(i: int) -> str:
    return f"This is request number {i}, spoken through the balancer."


async def test_balancer_spreads_requests_and_drains_a_stopped_replica(cluster: Cluster) -> None:
    # The health check passed on both replicas at layer 7 (describe -> info), and
    # failed on the impostor, whose port is open but which is not a TTS.
    states = await server_states(cluster.stats)
    assert states["tts1"]["check_status"] == states["tts2"]["check_status"] == "L7OK"
    assert states["fake"]["check_status"].startswith("L7"), states["fake"]["check_status"]

    # 20 requests, 4 at a time: all speech, spread over both replicas.
    texts = [sentence(i) for i in range(20)]
    for text, resp in zip(texts, await speak_all(cluster.uri, texts), strict=True):
        assert resp.error is None, resp.error
        assert_speech(resp, text)
    before = await wait_served(cluster.replicas, 20)
    assert all(n > 0 for n in before.values()), before

    # A long reply in flight: its first audio read, then held (not read), so it stays
    # open on one replica; HAProxy's stats tell which.
    async with connect(cluster.uri) as held:
        await held.write_event(Synthesize(text=LONG_TEXT).event())
        first = await read_until(held, last=("audio-chunk",))
        async with asyncio.timeout(30):
            while True:
                states = await server_states(cluster.stats)
                busy = [n for n in cluster.replicas if states[n]["scur"] == "1"]
                if len(busy) == 1:
                    break
                await asyncio.sleep(0.1)
        victim_name = busy[0]
        victim = cluster.replicas[victim_name]
        (survivor_name,) = set(cluster.replicas) - {victim_name}
        survivor = cluster.replicas[survivor_name]
        assert victim.proc is not None
        victim.proc.send_signal(signal.SIGTERM)
        marked_down = asyncio.create_task(
            wait_for_states(cluster.stats, {victim_name: "DOWN", survivor_name: "UP"})
        )

        async def keep_asking() -> list[Response]:
            """Until the check marks it down, requests keep coming, one at a time."""
            window: list[Response] = []
            while not marked_down.done():
                window.append(await speak(cluster.uri, sentence(100 + len(window))))
            return window

        # Meanwhile the held reply is read to its end while its replica stops.
        rest, window = await asyncio.gather(read_until(held, timeout=60), keep_asking())
        await marked_down

    # The held reply: the whole text's audio, within the grace period (past it the
    # server would cut it off).
    full = Response(events=first.events + rest.events)
    assert full.types[-1] == "audio-stop"
    assert_speech(full, LONG_TEXT)
    # Each request of the window was answered in full or, if it reached the stopping
    # replica, refused with `busy`: never cut off, never left hanging.
    assert window, "no request was made while the replica stopped"
    for i, resp in enumerate(window):
        if resp.error is None:
            assert_speech(resp, sentence(100 + i))
        else:
            assert resp.error.code == "busy", resp.error

    assert victim.proc.wait(timeout=30) == 0, victim.log()
    assert "Cancelled" not in victim.log()

    # Once it is down: 20 more requests, none fails, all on the survivor.
    answered = 20 + 1 + sum(r.error is None for r in window)
    survived = (await wait_served(cluster.replicas, answered))[survivor_name]
    texts = [sentence(200 + i) for i in range(20)]
    for text, resp in zip(texts, await speak_all(cluster.uri, texts), strict=True):
        assert resp.error is None, resp.error
        assert_speech(resp, text)
    after = await wait_served({survivor_name: survivor}, survived + 20)
    assert after[survivor_name] == survived + 20


# ---------------------------------------------------------------------- Kubernetes


def manifests(folder: Path) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(folder.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def kubernetes_validate(*paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(TOOLS / "kubernetes-validate"), "--strict", *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_kubernetes_manifests_are_valid() -> None:
    files = sorted(p for p in BASE.glob("*.yaml") if p.name != "kustomization.yaml")
    kinds = sorted(d["kind"] for d in manifests(BASE))
    assert kinds == [
        "Deployment",
        "HorizontalPodAutoscaler",
        "PersistentVolumeClaim",
        "PodDisruptionBudget",
        "Service",
    ]
    proc = kubernetes_validate(*files)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_kubernetes_validate_rejects_a_broken_deployment(tmp_path: Path) -> None:
    (deployment,) = [d for d in manifests(BASE) if d["kind"] == "Deployment"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinessProbe"]["httpGet"]["port"] = [10201]
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(deployment))
    assert kubernetes_validate(broken).returncode != 0


def test_deployment_probes_and_settings_match_the_server() -> None:
    """What no schema knows: probes on the HTTP door's /ready and /health at the port the
    env opens it on, env vars that are real settings, zeroconf off, voices read-only."""
    (deployment,) = [d for d in manifests(BASE) if d["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    settings = {ENV_PREFIX + f.name.upper() for f in settings_fields()}
    assert set(env) <= settings, set(env) - settings
    assert f"{ENV_PREFIX}ZEROCONF" not in env
    http_port = int(env[f"{ENV_PREFIX}HTTP"].rpartition(":")[2])
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": http_port}
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": http_port}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    voices = env[f"{ENV_PREFIX}DATA_DIRS"]
    assert mounts[voices]["readOnly"] is True
    # The pod gets longer than the server's own grace to finish what it serves.
    grace = float(env.get(f"{ENV_PREFIX}SHUTDOWN_GRACE") or 5.0)
    assert pod["terminationGracePeriodSeconds"] > grace


@pytest.mark.parametrize("profile", ["pi", "balanced"])
def test_kubernetes_profiles_render_and_validate(tmp_path: Path, profile: str) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: its built-in kustomize renders the profiles")
    proc = subprocess.run(
        [kubectl, "kustomize", str(KUBERNETES / "profiles" / profile)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    rendered = tmp_path / f"{profile}.yaml"
    rendered.write_text(proc.stdout)
    checked = kubernetes_validate(rendered)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    (deployment,) = [d for d in yaml.safe_load_all(proc.stdout) if d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    names = [e["name"] for e in container["env"]]
    assert len(names) == len(set(names)), names  # the profile replaced, not added
    assert set(names) <= {ENV_PREFIX + f.name.upper() for f in settings_fields()}
    env = {e["name"]: e.get("value") for e in container["env"]}
    memory = container["resources"]["limits"]["memory"]
    if profile == "pi":
        assert env[f"{ENV_PREFIX}MAX_VOICES"] == "1"
        assert env[f"{ENV_PREFIX}WORKERS"] == "1"
        assert memory == "640Mi"
    else:
        assert f"{ENV_PREFIX}MAX_VOICES" not in env
        assert env[f"{ENV_PREFIX}WORKERS"] == "2"
        assert memory == "1536Mi"
