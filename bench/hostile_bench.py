"""Hostile input and faults, counted: the closing figures of issue 14.

    .venv/bin/python bench/hostile_bench.py [--requests 3000] [--kills 30] [--seed 14]

Prints, for each family of bad input, how many were tried and how many ended cleanly (a typed
error, or a correct answer; never a traceback, a hang or a changed store), the SIGKILLs a store
survived, and the memory and byte bounds measured against a baseline in the same run:

- requests: hand-made hostile values for every field of every request model, and seeded random
  requests (fields drawn from the models, values from a hostile pool), validated; the valid ones
  are sized against the stage budgets (``stages.budgets``);
- command line: hostile arguments to the installed ``prefect-acestep``, each in its own process
  (clean = exit 2 with one ``error:`` line);
- latents on disk: random bit flips and truncations, then a read (clean = ``LatentCorrupt``, the
  file quarantined, the record tombstoned);
- bundles: random byte flips in a bundle, then an import (clean = ``BundleError`` with nothing
  written, or an import whose latents verify);
- HTTP: hostile servers on 127.0.0.1 (drip, huge headers, redirects elsewhere, private addresses)
  and decompression bombs (clean = a typed error within the time limit);
- kills: a process mixing puts, leases, gc under a byte budget, corruption reads and bundle imports,
  killed with SIGKILL at random moments; after each, the store must open and every listed latent
  read back whole (but one the process had just damaged on purpose, which the read sets aside);
- memory: peak resident growth of decoding a batch one item at a time against decoding it in one
  call, of importing a 192 kHz file against its decoded size, and of importing ``/dev/zero``.
"""

from __future__ import annotations

import argparse
import io
import ipaddress
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
from loguru import logger
from pydantic import ValidationError

from prefect_acestep.stages.audio import FetchPolicy, fetch_audio, load_audio
from prefect_acestep.stages.budgets import check_stage_size
from prefect_acestep.stages.errors import AudioError, BundleError, LatentCorrupt, StageError
from prefect_acestep.stages.geometry import FRAME_RATE
from prefect_acestep.stages.params import StageParams
from prefect_acestep.stages.requests import GenerateRequest, PipelineRequest, SimpleRequest
from prefect_acestep.stages.store import LatentStore

ROOT = Path(__file__).resolve().parents[1]
COMMAND = str(Path(sys.executable).parent / "prefect-acestep")
MODELS = {"StageParams": StageParams, "GenerateRequest": GenerateRequest, "SimpleRequest": SimpleRequest}
HOSTILE_VALUES: list[Any] = [
    None, "", " ", -1, 0, -0.0, 1e308, -1e308, float("nan"), float("inf"), float("-inf"), 2**64, -(2**63),
    True, [], {}, [[[[[]]]]], {"a": {"b": {"c": {}}}}, "x" * 70_000, "\ud800", "\x00", "../../etc/passwd",
    "🎵" * 3000, "NaN", "1e999", [1] * 1000, {"$ref": "#"}, "' OR 1=1 --", "<script>", 600.0001, -600.0001,
    15001, 64, 65, 200, 201, "C major", "Z minor", "turbo", "nonexistent-variant", "s3://x:y@bucket/p",
]  # fmt: skip


def section(title: str) -> None:
    print(f"\n== {title}")


def outcome(kind: Counter, ok: bool, label: str) -> None:
    kind["tried"] += 1
    kind["clean" if ok else f"UNCLEAN {label}"] += 1


# --- requests ------------------------------------------------------------------------------------


def validate(model: type, data: Any) -> str:
    """'valid', 'refused' (a typed validation error) or the unexpected exception's name."""
    try:
        value = model.model_validate(data)
    except (ValidationError, StageError):
        return "refused"
    except Exception as exc:  # noqa: BLE001 (counting what escapes)
        return type(exc).__name__
    if isinstance(value, StageParams):
        try:
            frames = max(1, round((value.duration or 30.0) * FRAME_RATE))
            check_stage_size(value, frames, len(value.checkpoint_steps))
        except StageError:
            return "refused"
        except Exception as exc:  # noqa: BLE001
            return type(exc).__name__
    return "valid"


def hand_made_requests() -> Counter:
    """Every hostile value in every field of every model, and in a pipeline stage."""
    counts: Counter = Counter()
    for name, model in MODELS.items():
        for field in model.model_fields:
            for value in HOSTILE_VALUES:
                result = validate(model, {field: value})
                outcome(counts, result in ("valid", "refused"), f"{name}.{field}={value!r:.40} -> {result}")
    for field in StageParams.model_fields:
        for value in HOSTILE_VALUES[::3]:
            result = validate(PipelineRequest, {"stages": [{"stage_type": "generate", field: value}]})
            outcome(counts, result in ("valid", "refused"), f"stage.{field} -> {result}")
    return counts


def generated_requests(n: int, rng: random.Random) -> Counter:
    """Seeded random requests: a plausible request with 1-6 fields replaced, each by a value from
    the hostile pool (a third of the time) or a plausible one (numbers around every field's bounds,
    names the models know and do not know), so that many validate and meet the stage budgets."""
    counts: Counter = Counter()
    fields = list(StageParams.model_fields)

    def plausible() -> Any:
        return rng.choice([
            rng.uniform(-700, 700), rng.randint(-2, 70_000), rng.choice([0.0, 0.5, 1.0, 4.0, 30.0, 120.0, 600.0]),
            rng.choice(["generate", "refine", "cover", "repaint", "lego", "extract", "complete", "remix"]),
            rng.choice(["turbo", "base", "sft", "turbo-shift3", "xl"]), rng.choice([True, False]),
            rng.choice(["C major", "D minor", "H major", ""]), [rng.randint(-1, 210) for _ in range(rng.randint(0, 5))],
            rng.choice([1, 2, 8, 12, 64, 65]), rng.choice(["drums", "bass", "vocals", "kazoo"]),
        ])  # fmt: skip

    for _ in range(n):
        data: dict[str, Any] = {"caption": "generated", "seed": rng.randint(0, 1000)}
        for field in rng.sample(fields, rng.randint(1, 6)):
            data[field] = rng.choice(HOSTILE_VALUES) if rng.random() < 1 / 3 else plausible()
        result = validate(StageParams, data)
        counts[result] += 1
        outcome(counts, result in ("valid", "refused"), f"{data!r:.80} -> {result}")
    return counts


# --- the command line ----------------------------------------------------------------------------


def cli_cases(work: Path, latent_id: str) -> list[list[str]]:
    (work / "deep.yaml").write_text("a: " + "[" * 5000 + "]" * 5000 + "\n")
    (work / "bin.yaml").write_bytes(b"\xff\xfe\x00\x01")
    (work / "aliases.yaml").write_text("a: &a [x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n" for i in range(9)))
    (work / "huge.yaml").write_text("caption: " + "y" * 2_000_000)
    (work / "notmapping.yaml").write_text("- 1\n- 2\n")
    (work / "dir.wav").mkdir(exist_ok=True)
    for fifo in ("fifo", "pipe.wav"):
        if not (work / fifo).exists():
            os.mkfifo(work / fifo)
    return [
        ["run", "deep.yaml"], ["run", "/dev/zero"], ["run", "bin.yaml"], ["run", "aliases.yaml"], ["run", "huge.yaml"],
        ["run", "notmapping.yaml"], ["run", "fifo"], ["run", str(work)], ["run", "absent.yaml"],
        ["generate", "--request", "deep.yaml"], ["generate", "--duration", "-5"], ["generate", "--steps", "0"],
        ["generate", "--caption", "\udcff"], ["generate", "--seed", str(2**40)],
        ["latents", "show", "../../etc/passwd"], ["latents", "show", "x" * 500], ["latents", "pin", "nope"],
        ["latents", "rm", "nope"], ["latents", "lineage", "NOPE"], ["latents", "import", "/dev/zero"],
        ["latents", "import", "bin.yaml"], ["latents", "import", "fifo"], ["latents", "import", str(work)],
        ["latents", "export", latent_id, "-o", "/proc/x.bundle"], ["latents", "export", latent_id, "-o", "dir.wav"],
        ["latents", "export", latent_id, "-o", "fifo"], ["latents", "export", "nope", "-o", "x.bundle"],
        ["decode", latent_id, "-o", "dir.wav"], ["decode", latent_id, "-o", "/proc/x.wav"],
        ["decode", latent_id, "-o", "x.notaformat"], ["decode", latent_id, "--sample", "9", "-o", "y.wav"],
        ["decode", latent_id, "-o", "pipe.wav"], ["restore", "nope"], ["to-stage", latent_id, "--sample", "-3"],
    ]  # fmt: skip


def command_line(work: Path, env: dict[str, str], latent_id: str) -> Counter:
    counts: Counter = Counter()
    for args in cli_cases(work, latent_id):
        try:
            done = subprocess.run([COMMAND, *args], cwd=work, env=env, capture_output=True, text=True, timeout=120)
            lines = done.stderr.strip().splitlines()
            clean = done.returncode == 2 and "Traceback" not in done.stderr and (
                len(lines) == 1 and lines[0].startswith("error: ") or "Usage:" in done.stderr)
        except subprocess.TimeoutExpired:
            clean, done = False, None
        outcome(counts, clean, f"{args} -> {done.returncode if done else 'hang'} {done.stderr[-200:] if done else ''}")
    return counts


# --- latents on disk, bundles --------------------------------------------------------------------


def damaged_latents(n: int, rng: random.Random, work: Path) -> Counter:
    """Clean: the read refuses it and the store sets it aside (no longer listed, file in
    ``corrupt/``), or, when the flip hit a byte no digest covers (the record's JSON text), the
    read returns the original tensor."""
    counts: Counter = Counter()
    store = LatentStore(work / "damage")
    for index in range(n):
        tensor = torch.randn(1, rng.randint(1, 200), 64)
        latent_id = store.put(tensor, stage_type="generate", extras={"m": torch.randn(3)} if index % 2 else None)
        path = work / "damage" / "latents" / f"{latent_id}.safetensors"
        data = bytearray(path.read_bytes())
        if index % 3 == 0:
            data = data[: rng.randrange(len(data))]
        else:
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(data))
        try:
            store.verify(latent_id)
            clean = torch.equal(store.get(latent_id), tensor)
        except LatentCorrupt:
            clean = not store.exists(latent_id) and (work / "damage" / "corrupt" / path.name).exists()
        except Exception as exc:  # noqa: BLE001
            clean = False
            logger.error("damaged latent {}: {}: {}", index, type(exc).__name__, exc)
        outcome(counts, clean, f"damaged latent {index}")
    return counts


def damaged_bundles(n: int, rng: random.Random, work: Path) -> Counter:
    counts: Counter = Counter()
    source = LatentStore(work / "bundle-source")
    ids = [source.put(torch.randn(1, 20, 64), stage_type="generate", extras={"x": torch.randn(2)}) for _ in range(3)]
    original = source.export_bundle(ids, work / "good.bundle").read_bytes()
    for index in range(n):
        data = bytearray(original)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        path = work / f"bad-{index}.bundle"
        path.write_bytes(bytes(data))
        target = LatentStore(work / f"bundle-target-{index}")
        try:
            imported = target.import_bundle(path)
            clean = all(target.verify(latent_id) is None for latent_id in imported)
        except BundleError:
            clean = not list((work / f"bundle-target-{index}" / "latents").glob("*.safetensors"))
        except Exception as exc:  # noqa: BLE001
            clean = False
            logger.error("bundle {}: {}: {}", index, type(exc).__name__, exc)
        target.close()
        outcome(counts, clean, f"bundle {index}")
    return counts


# --- HTTP and audio files ------------------------------------------------------------------------


def serve(handler) -> tuple[int, threading.Event]:
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=_serve_one, args=(conn, handler, stop), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    stop.listener = listener  # type: ignore[attr-defined]
    return listener.getsockname()[1], stop


def _serve_one(conn: socket.socket, handler, stop: threading.Event) -> None:
    with conn:
        try:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                head += chunk
            handler(conn, stop)
        except OSError:
            pass


def wav(seconds: float = 0.2) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, np.zeros(int(seconds * 48000), dtype=np.float32), 48000, format="WAV")
    return buffer.getvalue()


def hostile_http(work: Path) -> tuple[Counter, float]:
    counts: Counter = Counter()
    loopback = FetchPolicy(allowed_networks=(ipaddress.ip_network("127.0.0.0/8"),))
    good = wav()

    def drip_headers(conn, stop):
        for byte in b"HTTP/1.1 200 OK\r\nX: " + b"a" * 100_000:
            if stop.wait(0.01):
                return
            conn.sendall(bytes([byte]))

    def drip_body(conn, stop):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(good))
        for byte in good:
            if stop.wait(0.01):
                return
            conn.sendall(bytes([byte]))

    def huge_headers(conn, stop):
        conn.sendall(b"HTTP/1.1 200 OK\r\n")
        for _ in range(50_000):
            conn.sendall(b"X-F: " + b"b" * 1000 + b"\r\n")

    def endless(conn, stop):
        conn.sendall(b"HTTP/1.1 200 OK\r\n\r\n" + good[:44])
        while not stop.is_set():
            conn.sendall(b"\0" * 65536)

    def lying_length(conn, stop):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n" + good)

    def gzip_bomb(conn, stop):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 20\r\n\r\n" + b"\x1f\x8b" + b"\0" * 18)

    def ok(conn, stop):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(good) + good)

    target_port, target_stop = serve(ok)

    def elsewhere(conn, stop):
        conn.sendall(f"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:{target_port}/x.wav\r\nContent-Length: 0\r\n\r\n".encode())

    def metadata(conn, stop):
        conn.sendall(b"HTTP/1.1 302 Found\r\nLocation: http://169.254.169.254/latest/\r\nContent-Length: 0\r\n\r\n")

    slowest = 0.0
    servers = [target_stop]
    cases = [drip_headers, drip_body, huge_headers, endless, lying_length, gzip_bomb, elsewhere, metadata]
    for handler in cases:
        port, stop = serve(handler)
        servers.append(stop)
        started = time.monotonic()
        try:
            fetch_audio(f"http://u:pw@127.0.0.1:{port}/a.wav?sig=s3cr3t", work / "http", timeout=5, total_timeout=1.0,
                        max_bytes=2_000_000, policy=loopback)  # fmt: skip
            clean = False
        except AudioError as exc:
            clean = "pw" not in str(exc) and "s3cr3t" not in str(exc)
        elapsed = time.monotonic() - started
        slowest = max(slowest, elapsed)
        outcome(counts, clean and elapsed < 30, f"http {handler.__name__} ({elapsed:.1f} s)")
    for url in ("http://127.0.0.1:1/x.wav", "http://10.0.0.1/x.wav", "http://[::1]/x.wav", "http://169.254.169.254/",
                "http://[::ffff:192.168.0.1]/x", "http://0.0.0.0/x", "ftp://example.org/x.wav", "file:///etc/passwd"):
        try:
            fetch_audio(url, work / "http", policy=FetchPolicy())
            clean = False
        except AudioError:
            clean = True
        outcome(counts, clean, f"policy {url}")
    for stop in servers:
        stop.set()
        stop.listener.close()  # type: ignore[attr-defined]
    return counts, slowest


def audio_bombs(work: Path) -> Counter:
    counts: Counter = Counter()
    files = {
        "8ch.flac": (48_000, 8, 60), "16ch.wav": (48_000, 16, 1), "long.flac": (8_000, 1, 700),
        "rate.wav": (1_000_000, 1, 1),
    }  # fmt: skip
    for name, (rate, channels, seconds) in files.items():
        path = work / name
        try:
            with sf.SoundFile(path, "w", samplerate=rate, channels=channels) as f:
                for _ in range(seconds):
                    f.write(np.zeros((rate, channels), dtype=np.float32))
        except (sf.LibsndfileError, RuntimeError, ValueError):
            path.write_bytes(b"RIFF\0\0\0\0WAVE")  # libsndfile would not write it: a header-only file
        try:
            load_audio(path, max_seconds=600)
            clean = False
        except AudioError:
            clean = True
        outcome(counts, clean, f"bomb {name}")
    return counts


# --- kills ---------------------------------------------------------------------------------------


KILLED_WORKER = """
import random, sys, torch
from loguru import logger
logger.remove()
from prefect_acestep.stages.store import LatentStore
from prefect_acestep.stages.errors import StageError
root, seed = sys.argv[1], int(sys.argv[2])
rng = random.Random(seed)
store = LatentStore(root, max_bytes=600_000)
print("ready", flush=True)
while True:
    roll = rng.random()
    try:
        if roll < 0.5:
            mine = [r.id for r in store.list(limit=5)]
            store.put(torch.randn(1, rng.randint(1, 400), 64), stage_type="generate",
                      parent_ids=[rng.choice(mine)] if mine and rng.random() < 0.5 else [],
                      extras={"m": torch.randn(1, 4, 64)} if rng.random() < 0.3 else None, pipeline_id="p%d" % seed)
        elif roll < 0.6:
            store.lease("p%d" % seed, 30)
        elif roll < 0.7:
            store.gc()
        elif roll < 0.8:
            ids = [r.id for r in store.list(limit=3)]
            if ids:
                store.import_bundle(store.export_bundle(ids, root + "/../b%d.bundle" % seed))
        elif roll < 0.9:
            ids = [r.id for r in store.list(limit=10)]
            if ids:
                victim = rng.choice(ids)
                with open(root + "/../victims.txt", "a") as log:  # damaged on purpose: the check knows
                    log.write(victim + "\\n")
                path = root + "/latents/" + victim + ".safetensors"
                data = bytearray(open(path, "rb").read()); data[-3] ^= 1; open(path, "wb").write(bytes(data))
                store.get(victim)
        else:
            ids = [r.id for r in store.list(limit=10)]
            if ids:
                store.pin(rng.choice(ids)) if rng.random() < 0.5 else store.release("p%d" % seed)
    except StageError:
        pass
"""


def kills(n: int, rng: random.Random, work: Path) -> Counter:
    counts: Counter = Counter()
    root = work / "killed-store"
    for index in range(n):
        proc = subprocess.Popen([sys.executable, "-c", KILLED_WORKER, str(root), str(index)], cwd=ROOT,
                                stdout=subprocess.PIPE, text=True)  # fmt: skip
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.05, 1.5))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        try:
            store = LatentStore(root, max_bytes=600_000)
            victims = set((work / "victims.txt").read_text().split()) if (work / "victims.txt").exists() else set()
            clean = True
            for latent_id in [record.id for record in store.list()]:
                try:
                    store.verify(latent_id)
                except LatentCorrupt:  # only a latent the worker damaged itself, then set aside
                    clean = clean and latent_id in victims and not store.exists(latent_id)
            store.gc()
            store.close()
        except Exception as exc:  # noqa: BLE001
            clean = False
            logger.error("after kill {}: {}: {}", index, type(exc).__name__, exc)
        outcome(counts, clean, f"kill {index}")
    return counts


# --- memory --------------------------------------------------------------------------------------


PEAK = """
import resource, sys, torch
from prefect_acestep.stages.backends.registry import load_backend
from prefect_acestep.stages.store import LatentStore
what, work = sys.argv[1], sys.argv[2]
model = load_backend("embedded")
if what.startswith("decode"):
    from prefect_acestep.stages.decode import decode_latent
    store = LatentStore(work + "/" + what)
    latent_id = store.put(torch.randn(8, 1500, 64, generator=torch.Generator().manual_seed(0)) * 0.3,
                          stage_type="generate", backend=model.identity)
    latents = store.get(latent_id)
    model.vae_decode(latents[:1])  # warm up
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if what == "decode-items":
    decode_latent(store, latent_id, work + "/out-items", backend=model)
elif what == "decode-batch":  # the former way: the whole batch through the VAE in one call
    audio = model.vae_decode(latents)
elif what == "hirate":
    from prefect_acestep.stages.audio import load_audio
    load_audio(work + "/hirate.flac", max_seconds=600)
elif what == "dev-zero":
    from prefect_acestep.stages.errors import BundleError
    try:
        LatentStore(work + "/z").import_bundle("/dev/zero")
    except BundleError:
        pass
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""


def peak_mb(what: str, work: Path) -> int:
    done = subprocess.run([sys.executable, "-c", PEAK, what, str(work)], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    return int(done.stdout.strip().splitlines()[-1])


def memory(work: Path) -> dict[str, int]:
    with sf.SoundFile(work / "hirate.flac", "w", samplerate=192_000, channels=2, format="FLAC", subtype="PCM_16") as f:
        for _ in range(30):
            f.write(np.zeros((1_920_000, 2), dtype=np.float32))  # 300 s
    return {name: peak_mb(name, work) for name in ("decode-items", "decode-batch", "hirate", "dev-zero")}


def report(title: str, counts: Counter) -> tuple[int, int]:
    unclean = [key for key in counts if key.startswith("UNCLEAN")]
    print(f"{title}: {counts['tried']} tried, {counts['clean']} handled cleanly")
    for key in unclean[:10]:
        print("   ", key)
    return counts["tried"], counts["clean"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--kills", type=int, default=30)
    parser.add_argument("--damage", type=int, default=200)
    parser.add_argument("--seed", type=int, default=14)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    torch.manual_seed(args.seed)
    logger.remove()
    logger.add(sys.stderr, level="ERROR")
    totals = [0, 0]
    with tempfile.TemporaryDirectory(prefix="hostile-bench-") as folder:
        work = Path(folder)
        env = {**os.environ, "ACE_LATENT_DIR": str(work / "cli-store"), "ACE_AUDIO_DIR": str(work / "cli-audio"),
               "PREFECT_HOME": str(work / "prefect-home"), "ACE_AUDIO_ALLOWED_NETWORKS": ""}  # fmt: skip
        from prefect_acestep.stages.backends.registry import load_backend

        cli_store = LatentStore(work / "cli-store")
        latent_id = cli_store.put(torch.randn(1, 50, 64) * 0.3, stage_type="generate",
                                  backend=load_backend("embedded").identity)  # fmt: skip
        cli_store.close()
        (work / "cli").mkdir()
        section("bad input")
        http_counts, slowest = hostile_http(work)
        families = [
            ("hand-made request values", hand_made_requests()),
            ("generated requests", generated_requests(args.requests, rng)),
            ("command line", command_line(work / "cli", env, latent_id)),
            ("damaged latents", damaged_latents(args.damage, rng, work)),
            ("damaged bundles", damaged_bundles(args.damage, rng, work)),
            ("hostile HTTP and URL policy", http_counts),
            ("audio bombs", audio_bombs(work)),
        ]
        for title, counts in families:
            tried, clean = report(title, counts)
            totals[0] += tried
            totals[1] += clean
        generated = families[1][1]
        print(f"   generated requests: {generated['valid']} valid, {generated['refused']} refused with a typed error")
        print(f"   slowest hostile HTTP exchange with total_timeout=1 s: {slowest:.2f} s")
        print(f"TOTAL bad input: {totals[0]} tried, {totals[1]} handled cleanly")
        section("kills")
        report("SIGKILLs survived", kills(args.kills, rng, work))
        section("memory (peak resident growth, MB)")
        peaks = memory(work)
        print(f"decode 8 x 60 s: one item at a time {peaks['decode-items']} MB, whole batch in one call "
              f"{peaks['decode-batch']} MB (ratio {peaks['decode-items'] / max(1, peaks['decode-batch']):.2f})")
        result_mb = 300 * 48_000 * 2 * 4 / 2**20
        print(f"import 300 s at 192 kHz: {peaks['hirate']} MB for a {result_mb:.0f} MB result "
              f"({peaks['hirate'] / result_mb:.2f}x); the source decoded at once would be {4 * result_mb:.0f} MB")
        print(f"import /dev/zero as a bundle: {peaks['dev-zero']} MB")


if __name__ == "__main__":
    main()
