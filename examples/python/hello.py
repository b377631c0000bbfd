"""Takes a seat of a license, works while holding it, and gives it back.

    pip install ./python
    python examples/python/hello.py [SERIAL] [SERVERS]

No SERIAL uses the activation file (`lic-udp activate`); no SERVERS the CLI's default.
Exits with the CLI's exit code when no seat is granted (1 full, 2 unknown, 3 no server).
"""

import sys
import time

import lic_udp


def main() -> int:
    serial = sys.argv[1] if len(sys.argv) > 1 else None
    server = sys.argv[2] if len(sys.argv) > 2 else None
    try:
        with lic_udp.Seat(serial=serial, server=server, on_change=lambda s: print("state:", s)) as seat:
            print(f"granted: {seat.used} of {seat.seats} seats in use")
            time.sleep(1)  # the licensed work; heartbeats run on the library's thread
    except lic_udp.LicenseError as e:
        print(f"hello: {e}", file=sys.stderr)
        return e.code
    print("released")
    return 0


if __name__ == "__main__":
    sys.exit(main())
