"""lic_udp against the real server: the C tests' cases, plus the callback on loss and regain."""

import os
import signal
import socket
import threading
import time

import pytest

import lic_udp
from conftest import TIMERS, Server, free_port_below_ephemeral_range, issue, lic, wait_for


def test_grant_full_unknown_unreachable_and_release(data_dir, tmp_path, monkeypatch):
    serial = issue(data_dir, seats=1)
    server = Server(data_dir)
    try:
        with lic_udp.Seat(serial=serial, server=server.addr) as seat:
            assert seat.state == "held"
            assert (seat.used, seat.seats) == (1, 1)
            assert server.holders() == [seat.lease_id]
            with pytest.raises(lic_udp.SeatsFull) as full:
                lic_udp.Seat(serial=serial, server=server.addr)
            assert full.value.code == 1 and "in use" in str(full.value)
        assert seat.state == "released"
        assert wait_for(5, lambda: server.in_use() == 0), "leaving the block released the seat"

        wrong = "0000000001" if serial == "0000000000" else "0000000000"
        with pytest.raises(lic_udp.UnknownLicense) as unknown:
            lic_udp.Seat(serial=wrong, server=server.addr)
        assert unknown.value.code == 2

        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
            silent.bind(("127.0.0.1", 0))
            addr = "127.0.0.1:%d" % silent.getsockname()[1]
            with pytest.raises(lic_udp.Unreachable) as unreachable:
                lic_udp.Seat(serial=serial, server=addr, timeout=1.5)
        assert unreachable.value.code == 3

        for kwargs in ({"serial": "12-34"}, {"serial": serial, "server": "host:notaport"}, {}):
            with pytest.raises(lic_udp.LicenseError) as bad:
                lic_udp.Seat(**{"server": server.addr, **kwargs})
            assert bad.value.code == 64, (kwargs, str(bad.value))
            assert not isinstance(bad.value, (lic_udp.SeatsFull, lic_udp.UnknownLicense, lic_udp.Unreachable))

        # serial=None and server=None: the activation file, as `lic-udp activate` wrote it.
        act = tmp_path / "activation.json"
        o = lic("activate", "--serial", serial, "--server", server.addr, env_extra={"LIC_UDP_ACTIVATION": str(act)})
        assert o.returncode == 0, o.stderr
        monkeypatch.setenv("LIC_UDP_ACTIVATION", str(act))
        seat = lic_udp.Seat()
        assert server.holders() == [seat.lease_id]
        seat.release()
        seat.release()  # idempotent
        assert seat.state == "released"
        assert wait_for(5, lambda: server.in_use() == 0)
    finally:
        server.kill()


def test_same_lease_across_a_server_sigkill_and_restart(data_dir):
    serial = issue(data_dir, seats=1)
    listen = "127.0.0.1:%d" % free_port_below_ephemeral_range()
    server = Server(data_dir, listen, TIMERS)
    try:
        with lic_udp.Seat(serial=serial, server=listen) as seat:
            lease = seat.lease_id
            assert server.holders() == [lease]
            server.kill()
            time.sleep(0.5)
            server.start()
            # Three TTLs: the restored lease alone would have expired; a re-handshake keeps it.
            time.sleep(9)
            assert server.holders() == [lease]
            assert seat.state == "held"
            assert seat.lease_id == lease
        assert wait_for(5, lambda: server.in_use() == 0)
    finally:
        server.kill()


def test_on_change_fires_on_loss_and_regain(data_dir):
    serial = issue(data_dir, seats=1)
    server = Server(data_dir, extra=TIMERS)
    changes = []
    seen = threading.Condition()

    def on_change(state):
        with seen:
            changes.append((state, threading.current_thread() is threading.main_thread()))
            seen.notify_all()

    try:
        seat = lic_udp.Seat(serial=serial, server=server.addr, on_change=on_change)
        assert seat.on_change is on_change
        # The server stops answering for longer than the lease TTL, then comes back.
        os.kill(server.proc.pid, signal.SIGSTOP)
        try:
            with seen:
                assert seen.wait_for(lambda: any(s == "lost" for s, _ in changes), timeout=15), changes
            assert seat.state == "lost"
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)
        with seen:
            assert seen.wait_for(lambda: changes and changes[-1][0] == "held", timeout=30), changes
        assert seat.state == "held"
        assert not any(on_main for _, on_main in changes), "callbacks run on the library's thread"
        seat.release()
        with seen:
            assert seen.wait_for(lambda: changes[-1][0] == "released", timeout=5), changes
        assert [s for s, _ in changes] == ["lost", "held", "released"]
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
        server.kill()


def test_many_threads_acquire_and_release_without_leaking(data_dir):
    serial = issue(data_dir, seats=3)
    server = Server(data_dir)
    results = []

    def worker():
        for _ in range(5):
            try:
                with lic_udp.Seat(serial=serial, server=server.addr, timeout=10) as seat:
                    results.append(seat.state)
            except lic_udp.SeatsFull:
                results.append("full")

    try:
        threads = [threading.Thread(target=worker) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(results) == 40 and set(results) <= {"held", "full"} and "held" in results, results
        assert wait_for(5, lambda: server.in_use() == 0)
    finally:
        server.kill()


def test_bad_arguments_raise_and_do_not_crash():
    with pytest.raises(ValueError):
        lic_udp.Seat(serial="0123456789", timeout=-1)
    with pytest.raises(TypeError):
        lic_udp.Seat(serial=123)


def test_the_example_runs(data_dir):
    import pathlib
    import subprocess
    import sys

    serial = issue(data_dir, seats=1)
    server = Server(data_dir)
    try:
        example = pathlib.Path(__file__).resolve().parents[2] / "examples" / "python" / "hello.py"
        o = subprocess.run([sys.executable, str(example), serial, server.addr], capture_output=True, text=True,
                           timeout=60)
        assert o.returncode == 0, o.stderr
        assert "granted: 1 of 1 seats in use" in o.stdout and "released" in o.stdout, o.stdout
        o = subprocess.run([sys.executable, str(example), "0000000000" if serial != "0000000000" else "0000000001",
                            server.addr], capture_output=True, text=True, timeout=60)
        assert o.returncode == 2, o.stderr
    finally:
        server.kill()


def test_revoked_license_ends_the_seat(data_dir):
    from conftest import PASSWORD

    serial = issue(data_dir, seats=1)
    server = Server(data_dir, extra=TIMERS)
    changes = []
    try:
        seat = lic_udp.Seat(serial=serial, server=server.addr, on_change=changes.append)
        o = lic("revoke", "--license", "1", "--user", "alice", "--password-stdin", "--data-dir", str(data_dir),
                stdin=PASSWORD)
        assert o.returncode == 0, o.stderr
        assert wait_for(15, lambda: seat.state == "ended"), seat.state
        seat.release()
        assert seat.state == "released"
        assert wait_for(5, lambda: changes == ["ended", "released"]), changes
    finally:
        server.kill()


def test_the_gil_is_released_while_acquiring():
    ticks = []
    done = threading.Event()

    def ticker():
        while not done.is_set():
            ticks.append(1)
            time.sleep(0.01)

    t = threading.Thread(target=ticker)
    t.start()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        try:
            with pytest.raises(lic_udp.Unreachable):
                lic_udp.Seat(serial="0123456789", server="127.0.0.1:%d" % silent.getsockname()[1], timeout=1.5)
        finally:
            done.set()
            t.join()
    # 1.5 s of waiting: with the GIL held the ticker could not have run more than once or twice.
    assert len(ticks) > 10, len(ticks)
