#!/bin/sh
# Starts coturn with the secret it shares with the gateways
# (CAVLO_TURN_SECRET, required) and its own address. That address is the
# one peer in a private range it may relay to: when both ends of a call
# use this relay (two people behind one NAT, or the demo on one machine),
# each end's peer is the other's relay address here. CAVLO_TURN_EXTERNAL_IP,
# if set, is the public address clients reach it at (behind Docker's port
# mapping or a cloud NAT). Extra arguments go to turnserver.
set -eu
: "${CAVLO_TURN_SECRET:?set CAVLO_TURN_SECRET, the secret shared with the gateways}"
self="$(hostname -i | cut -d' ' -f1)"
set -- --static-auth-secret="$CAVLO_TURN_SECRET" --relay-ip="$self" --allowed-peer-ip="$self" "$@"
if [ -n "${CAVLO_TURN_EXTERNAL_IP:-}" ]; then
  set -- --external-ip="$CAVLO_TURN_EXTERNAL_IP/$self" "$@"
fi
exec turnserver -c /etc/turnserver.conf "$@"
