"""Checks the compose deployment's TURN relay with valid credentials, as the
gateways hand them out (docs/security.md): it relays to public peers only,
never to private, loopback or link-local ones, and holds each user to its
quota of allocations.

    CAVLO_TURN_SECRET=... python3 turn_limits.py 127.0.0.1 3478

With credentials made from the shared secret (coturn's use-auth-secret:
username "<expiry>:<user>", password base64(HMAC-SHA1(secret, username))):
- an allocation succeeds;
- a permission for a public peer (TEST-NET-3) is granted, so the refusals
  below are the peer rules and not a broken request;
- permissions for 10.1.2.3, 127.0.0.1, 169.254.1.1 and 192.168.1.1 are
  refused (403);
- the user's allocations stop at user-quota (12): the next gets 486.
"""

import base64
import hashlib
import hmac
import os
import socket
import struct
import sys
import time

from turn_refuses_strangers import ERROR_CODE, MAGIC, REQUESTED_TRANSPORT, UDP, answer

ALLOCATE, ALLOCATE_OK = 0x0003, 0x0103
CREATE_PERMISSION, CREATE_PERMISSION_OK = 0x0008, 0x0108
USERNAME, MESSAGE_INTEGRITY, REALM, NONCE = 0x0006, 0x0008, 0x0014, 0x0015
XOR_PEER_ADDRESS = 0x0012
USER_QUOTA = 12


def attribute(kind, value):
    return struct.pack("!HH", kind, len(value)) + value + b"\0" * (-len(value) % 4)


def xor_address(ip):
    port = 9 ^ (MAGIC >> 16)
    address = struct.unpack("!I", socket.inet_aton(ip))[0] ^ MAGIC
    return struct.pack("!BBHI", 0, 1, port, address)


class Turn:
    """One client socket to the relay, with long-term credentials."""

    def __init__(self, address, username, password):
        self.address, self.username = address, username.encode()
        self.password = password
        self.realm = self.nonce = None
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.socket.settimeout(2)

    def close(self):
        self.socket.close()

    def ask(self, kind, attributes=b""):
        """Sends a request, signed once the realm and nonce are known;
        returns (type, {attribute: value})."""
        transaction = os.urandom(12)
        if self.nonce is not None:
            attributes += attribute(USERNAME, self.username) + attribute(REALM, self.realm)
            attributes += attribute(NONCE, self.nonce)
            key = hashlib.md5(self.username + b":" + self.realm + b":" + self.password.encode()).digest()
            # The integrity covers the header with the length it will have.
            header = struct.pack("!HHI", kind, len(attributes) + 24, MAGIC) + transaction
            digest = hmac.new(key, header + attributes, hashlib.sha1).digest()
            attributes += attribute(MESSAGE_INTEGRITY, digest)
        self.socket.sendto(struct.pack("!HHI", kind, len(attributes), MAGIC) + transaction + attributes, self.address)
        data, _ = self.socket.recvfrom(2048)
        return answer(data, transaction)

    def authenticated(self, kind, attributes=b""):
        """Asks once unsigned to learn the realm and nonce, then signed."""
        if self.nonce is None:
            _, found = self.ask(kind, attributes)
            if REALM not in found or NONCE not in found:
                raise ValueError("the relay gave no realm and nonce")
            self.realm, self.nonce = found[REALM], found[NONCE]
        return self.ask(kind, attributes)


def error_code(found):
    value = found.get(ERROR_CODE)
    return value[2] * 100 + value[3] if value else None


def allocate(turn):
    kind, found = turn.authenticated(ALLOCATE, struct.pack("!HHB3x", REQUESTED_TRANSPORT, 4, UDP))
    return kind, error_code(found)


def main():
    address = (sys.argv[1], int(sys.argv[2]))
    secret = os.environ["CAVLO_TURN_SECRET"].encode()
    username = f"{int(time.time()) + 600}:turn-smoke"
    password = base64.b64encode(hmac.new(secret, username.encode(), hashlib.sha1).digest()).decode()
    problems = []
    turns = [Turn(address, username, password) for _ in range(USER_QUOTA + 1)]
    try:
        kind, code = allocate(turns[0])
        if kind != ALLOCATE_OK:
            sys.exit(f"TURN at {address}: an allocation with valid credentials got {kind:#06x} ({code})")

        def permit(ip):
            kind, found = turns[0].ask(CREATE_PERMISSION, attribute(XOR_PEER_ADDRESS, xor_address(ip)))
            return kind, error_code(found)

        kind, code = permit("203.0.113.5")
        if kind != CREATE_PERMISSION_OK:
            problems.append(f"a public peer was refused ({code})")
        for ip in ("10.1.2.3", "127.0.0.1", "169.254.1.1", "192.168.1.1"):
            kind, code = permit(ip)
            if code != 403:
                problems.append(f"a permission for {ip} answered {kind:#06x} ({code}), not 403")
        for n, turn in enumerate(turns[1:], start=2):
            kind, code = allocate(turn)
            if n <= USER_QUOTA and kind != ALLOCATE_OK:
                problems.append(f"allocation {n} of {USER_QUOTA} was refused ({code})")
            if n > USER_QUOTA and code != 486:
                problems.append(f"allocation {n}, past the quota of {USER_QUOTA}, answered {kind:#06x} ({code}), not 486")
    finally:
        for turn in turns:
            turn.close()
    if problems:
        sys.exit(f"TURN at {address}: " + "; ".join(problems))
    print(f"smoke: TURN relays to public peers only (403 for private, loopback and link-local) "
          f"and stops a user at {USER_QUOTA} allocations (486)")


if __name__ == "__main__":
    main()
