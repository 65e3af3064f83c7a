"""How this machine's idle CPUs wake, and the kernel's default guest halt polling for one measure.

On a KVM guest whose cpuidle driver is ``haltpoll``, a virtual CPU with nothing to run polls for up to
``guest_halt_poll_ns`` before it halts, and waking a halted one costs a VM exit and an interrupt. The
kernel's default is 200 us (Linux, Documentation/virt/guest-halt-polling.rst). Some VMs boot with it
at 0 to spare the host's CPU (Firecracker's guests, for one: ``haltpoll.guest_halt_poll_ns=0`` on the
kernel command line). There, a client that waits idle in ``epoll_wait`` for a reply pays tens of
microseconds to wake when it lands, where a client still busy with its own work when the reply lands
pays none.

The first-read measure sets a read that idles while Redis answers (ours) against redis-py's GET, which
keeps its loop busy for the whole round trip. So where halt polling is off and may be changed (root),
that measure runs once as the machine is and once with the kernel's default, and the machine's value
is put back at once, whatever happens in between (only a kill -9 of the bench can leave the default in
place).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

HALT_POLL = Path("/sys/module/haltpoll/parameters/guest_halt_poll_ns")
CPUIDLE_DRIVER = Path("/sys/devices/system/cpu/cpuidle/current_driver")
KERNEL_DEFAULT_NS = 200_000


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def describe(driver: Path = CPUIDLE_DRIVER, halt_poll: Path = HALT_POLL) -> str:
    """The machine's idle setting, in a few words for a table row."""
    name = _read(driver)
    if name is None:
        return "cpuidle driver unknown"
    if name != "haltpoll":
        return f"cpuidle driver {name}"
    ns = _read(halt_poll)
    if ns is None or not ns.isdigit():
        return "guest halt polling (its limit unreadable)"
    if int(ns) == 0:
        return "guest halt polling off (guest_halt_poll_ns=0)"
    return f"guest halt polling up to {int(ns) / 1000:g} us"


@contextmanager
def kernel_default_halt_polling(halt_poll: Path = HALT_POLL) -> Iterator[bool]:
    """Within the block, guest halt polling at the kernel's default, where the machine has it off and
    lets it be changed; the machine's value is written back on the way out, however the block ends.
    Yields whether anything was changed (False: the machine is left as it is)."""
    before = _read(halt_poll)
    if before != "0":  # on already, or no haltpoll driver: nothing to compare
        yield False
        return
    try:
        halt_poll.write_text(f"{KERNEL_DEFAULT_NS}\n")
    except OSError:  # not root, or a read-only /sys
        yield False
        return
    try:
        yield True
    finally:
        halt_poll.write_text(f"{before}\n")
