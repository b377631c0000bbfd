"""Take, keep and give back a lic-udp floating-license seat.

Heartbeats run on the library's own thread; nothing needs an event loop. Return codes and
defaults are the CLI's (README, "Exit codes" and "Embedding").
"""

from types import TracebackType
from typing import Callable, Literal, Optional, Type

__version__: str

State = Literal["held", "lost", "ended", "released"]

class LicenseError(Exception):
    """No seat was granted; the message says why and what to do."""

    code: int
    """The CLI's exit code for this failure (e.g. 64 for a malformed serial)."""

class SeatsFull(LicenseError):
    """All seats of the license are in use (or the server is busy): try again later. Code 1."""

class UnknownLicense(LicenseError):
    """The license is unknown, revoked or expired, or the serial is wrong. Code 2."""

class Unreachable(LicenseError):
    """No license server answered within the timeout, or its name does not resolve. Code 3."""

class Seat:
    """A seat of a license, held while this object is.

    Blocks until the seat is granted (the GIL is released meanwhile) or raises a LicenseError.
    ``serial=None`` uses the activation file (``lic-udp activate``); ``server`` is
    ``"HOST[:PORT][,HOST[:PORT]...]"`` or None for $LIC_UDP_SERVER, the activated server,
    then 127.0.0.1:7301; ``timeout`` is in seconds, None for the retransmit schedule (about
    23 s with no answer). ``on_change(state)`` is called from the library's thread on each
    change of state.
    """

    def __init__(
        self,
        serial: Optional[str] = None,
        server: Optional[str] = None,
        timeout: Optional[float] = None,
        on_change: Optional[Callable[[State], object]] = None,
    ) -> None: ...
    @property
    def state(self) -> State:
        """"held", "lost" (trying to regain it), "ended" (revoked or expired) or "released"."""
    @property
    def used(self) -> int:
        """Seats in use, this one included, when it was granted."""
    @property
    def seats(self) -> int:
        """Seats of the license."""
    @property
    def lease_id(self) -> str:
        """The lease as `lic-udp status` shows it (16 hex digits); kept across server restarts."""
    @property
    def on_change(self) -> Optional[Callable[[State], object]]:
        """Called as ``on_change(state)`` from the library's thread; None removes it."""
    @on_change.setter
    def on_change(self, cb: Optional[Callable[[State], object]]) -> None: ...
    def release(self) -> None:
        """Gives the seat back, waiting at most 1 s for the server. Idempotent."""
    def __enter__(self) -> "Seat": ...
    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> bool: ...
