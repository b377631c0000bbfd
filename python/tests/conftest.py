"""Runs the real `lic-udp` server binary on 127.0.0.1 for the package's tests.

$LIC_UDP_BIN names the binary; by default the debug build of this repository
(`cargo build` at the root), as .ci/run leaves it.
"""

import os
import pathlib
import random
import socket
import subprocess
import threading
import time

import pytest

PASSWORD = "correct horse battery staple"
ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = os.environ.get("LIC_UDP_BIN", str(ROOT / "target" / "debug" / "lic-udp"))
# Short timers, so that a loss and a regain take seconds.
TIMERS = ["--lease-ttl", "3s", "--heartbeat", "500ms"]


def lic(*args, stdin=None, env_extra=None):
    env = dict(os.environ)
    env.pop("LIC_UDP_SERVER", None)
    env["LIC_UDP_ACTIVATION"] = env.get("LIC_UDP_TEST_ACTIVATION", "/nonexistent/lic-udp-activation.json")
    env.update(env_extra or {})
    return subprocess.run([BIN, *args], input=stdin, capture_output=True, text=True, env=env, timeout=60)


class Server:
    """A running `lic-udp serve` on a data dir with fast (insecure) Argon2 parameters."""

    def __init__(self, data_dir, listen="127.0.0.1:0", extra=()):
        self.dir = data_dir
        self.listen = listen
        self.extra = list(extra)
        self.proc = None
        self.addr = None
        self.start()

    def start(self):
        self.proc = subprocess.Popen(
            [BIN, "serve", "--listen", self.listen, "--data-dir", str(self.dir), *self.extra],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        found = threading.Event()
        said = []

        def read():
            for line in self.proc.stderr:
                said.append(line)
                if "serving on udp://" in line and not found.is_set():
                    self.addr = line.split("serving on udp://")[1].split()[0]
                    found.set()

        threading.Thread(target=read, daemon=True).start()
        if not found.wait(20):
            self.proc.kill()
            raise RuntimeError(f"lic-udp serve did not start: {''.join(said)}")

    def kill(self):
        self.proc.kill()
        self.proc.wait()

    def holders(self, license_id=1):
        import json

        o = lic("status", "--json", "--data-dir", str(self.dir))
        assert o.returncode == 0, o.stderr
        for l in json.loads(o.stdout)["licenses"]:
            if l["id"] == license_id:
                return sorted(h["lease"] for h in l["holders"])
        return []

    def in_use(self, license_id=1):
        return len(self.holders(license_id))


def issue(data_dir, seats):
    d = str(data_dir)
    o = lic("user", "add", "--user", "alice", "--password-stdin", "--data-dir", d, stdin=PASSWORD)
    assert o.returncode == 0, o.stderr
    o = lic("issue", "--user", "alice", "--type", "team", "--seats", str(seats), "--password-stdin",
            "--data-dir", d, stdin=PASSWORD)
    assert o.returncode == 0, o.stderr
    return o.stdout.strip()


def free_port_below_ephemeral_range():
    """A port a restarted server can take again: no client socket bound to port 0 gets it."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except OSError:
        low = 32768
    for _ in range(500):
        port = random.randrange(max(2048, low - 12000), low)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    raise RuntimeError("no free UDP port")


def wait_for(limit, f):
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if f():
            return True
        time.sleep(0.1)
    return f()


@pytest.fixture(autouse=True)
def no_user_defaults(monkeypatch):
    """Keeps the tests away from the real user's activation file and server."""
    monkeypatch.delenv("LIC_UDP_SERVER", raising=False)
    monkeypatch.setenv("LIC_UDP_ACTIVATION", "/nonexistent/lic-udp-activation.json")


@pytest.fixture
def data_dir(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    (d / "lic-udp.toml").write_text("[kdf]\nm_kib = 1024\nt = 1\np = 1\n")
    return d
