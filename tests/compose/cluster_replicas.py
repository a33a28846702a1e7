"""Checks that the cluster deployment really keeps three copies.

    docker exec NATS_CONTAINER wget -qO- 'http://127.0.0.1:8222/jsz?streams=true&config=true' |
        python3 cluster_replicas.py

Reads a NATS node's JetStream report on stdin and exits 1 unless the
JetStream cluster has 3 nodes and both the chat stream (CAVLO_CHAT) and the
rooms bucket (KV_CAVLO_ROOMS) have 3 replicas. Killed nodes come back with
their volumes, so a single-replica setup would pass every fault; this is
what tells them apart.
"""

import json
import sys

WANTED = ("CAVLO_CHAT", "KV_CAVLO_ROOMS")


def main():
    report = json.load(sys.stdin)
    size = report.get("meta_cluster", {}).get("cluster_size")
    streams = {
        stream["name"]: stream
        for account in report.get("account_details", [])
        for stream in account.get("stream_detail", [])
    }
    problems = []
    if size != 3:
        problems.append(f"the JetStream cluster has {size} nodes, not 3")
    for name in WANTED:
        stream = streams.get(name)
        replicas = stream and stream.get("config", {}).get("num_replicas")
        if replicas != 3:
            problems.append(f"{name} has {replicas} replicas, not 3")
        else:
            print(f"{name}: 3 replicas, leader {stream.get('cluster', {}).get('leader', 'none yet')}")
    for problem in problems:
        print(problem)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
