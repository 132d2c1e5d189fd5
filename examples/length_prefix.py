"""Length-prefixed messages: gev's protocol example, with pygev's native framing.

Each message on the wire is a 4-byte big-endian length, then that many bytes. The framing
runs in Rust, in the loop threads: ``on_message`` gets one whole payload per call however
TCP split or glued the bytes, and the payload it returns goes back with its header.

Server:

    python examples/length_prefix.py --port 1833

Client (sends each line typed, or each ``--send`` argument, and prints the replies):

    python examples/length_prefix.py --client --port 1833 --send hello --send world
"""

from __future__ import annotations

# The wire format, the replies and the client are those of examples/custom_protocol.py,
# where the same framing is written in Python.
from custom_protocol import run

import pygev


def native_framing() -> pygev.LengthPrefix:
    return pygev.LengthPrefix(header_size=4, byteorder="big", max_frame_size=1 << 20)


if __name__ == "__main__":
    run(__doc__, native_framing, "length-prefix")
