"""Checks the compose deployment's TURN relay from outside: it answers STUN
(so clients can learn their public address) and refuses to allocate a
relay without credentials (401), so it is no open relay.

    python3 turn_refuses_strangers.py 127.0.0.1 3478

Retries for up to 30 s while coturn starts, then fails saying what it got.
"""

import os
import socket
import struct
import sys
import time

MAGIC = 0x2112A442
BINDING, BINDING_OK = 0x0001, 0x0101
ALLOCATE, ALLOCATE_ERROR = 0x0003, 0x0113
REQUESTED_TRANSPORT, ERROR_CODE = 0x0019, 0x0009
UDP = 17


def request(kind, attributes=b""):
    transaction = os.urandom(12)
    return transaction, struct.pack("!HHI", kind, len(attributes), MAGIC) + transaction + attributes


def answer(data, transaction):
    """Reads a STUN answer to `transaction`: (type, {attribute: value})."""
    kind, length, magic = struct.unpack("!HHI", data[:8])
    if magic != MAGIC or data[8:20] != transaction:
        raise ValueError("not an answer to this request")
    attributes, at = {}, 20
    while at < 20 + length:
        name, size = struct.unpack("!HH", data[at:at + 4])
        attributes[name] = data[at + 4:at + 4 + size]
        at += 4 + size + (-size % 4)
    return kind, attributes


def ask(address, kind, attributes=b""):
    """Sends one STUN request over UDP; returns (type, {attribute: value})."""
    transaction, message = request(kind, attributes)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.sendto(message, address)
        data, _ = s.recvfrom(2048)
    return answer(data, transaction)


def check(address):
    kind, _ = ask(address, BINDING)
    if kind != BINDING_OK:
        return f"binding answered {kind:#06x}"
    transport = struct.pack("!HHB3x", REQUESTED_TRANSPORT, 4, UDP)
    kind, attributes = ask(address, ALLOCATE, transport)
    if kind != ALLOCATE_ERROR or ERROR_CODE not in attributes:
        return f"an allocation without credentials answered {kind:#06x}"
    code = attributes[ERROR_CODE][2] * 100 + attributes[ERROR_CODE][3]
    return None if code == 401 else f"an allocation without credentials got error {code}"


def main():
    address = (sys.argv[1], int(sys.argv[2]))
    deadline = time.monotonic() + 30
    problem = "not asked yet"
    while time.monotonic() < deadline:
        try:
            problem = check(address)
        except (OSError, ValueError) as err:
            problem = f"no answer: {err}"
        if problem is None:
            print("smoke: TURN answers STUN and refuses an allocation without credentials (401)")
            return
        time.sleep(1)
    sys.exit(f"TURN at {address}: {problem}")


if __name__ == "__main__":
    main()
