#!/usr/bin/env bash
# The TCP collective between two hosts over a clean link, then a slow and lossy one: two network
# namespaces joined by a veth pair, `bert-native launch --nnodes 2` with one rank in each running
# `bench allreduce` (8 MB all-reduces, each result checked), first as is, then with a token bucket
# of RATE on each end (bursts wait up to 20 ms in its queue; what overflows it is dropped) and
# LOSS percent of arriving TCP packets dropped at random by nftables. (This kernel has no `netem`
# queue, which would add a fixed delay.) Prints one JSON line per link and the packets dropped.
#
#   bench/lossy_link.sh [BINARY]   (default: this checkout's release build)
# Environment: RATE (100mbit), LOSS (2), ITERATIONS (20). Needs root, iproute2 and nftables
# (scripts/install-deps.sh test installs both); without root it says so and stops.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
  echo "bench/lossy_link.sh: needs root (network namespaces, tc and nftables); skipped" >&2
  exit 0
fi
RATE=${RATE:-100mbit}
LOSS=${LOSS:-2}
ITERATIONS=${ITERATIONS:-20}
BIN=${1:-}
if [ -z "$BIN" ]; then
  cargo build --release -q -p bert-native
  BIN="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release/bert-native"
fi
hosts=(lossy-link-a-$$ lossy-link-b-$$)
ends=(lla$$ llb$$)
addresses=(10.79.0.1 10.79.0.2)
logs=$(mktemp -d)
cleanup() { for host in "${hosts[@]}"; do ip netns del "$host" 2>/dev/null || true; done; rm -rf "$logs"; }
trap cleanup EXIT
for host in "${hosts[@]}"; do ip netns add "$host"; done
ip link add "${ends[0]}" type veth peer name "${ends[1]}"
for node in 0 1; do
  ip link set "${ends[$node]}" netns "${hosts[$node]}"
  ip -n "${hosts[$node]}" addr add "${addresses[$node]}/24" dev "${ends[$node]}"
  ip -n "${hosts[$node]}" link set "${ends[$node]}" up
  ip -n "${hosts[$node]}" link set lo up
done

all_reduce() {
  for node in 0 1; do
    ip netns exec "${hosts[$node]}" env RAYON_NUM_THREADS=1 "$BIN" launch --nnodes 2 \
      --node-rank "$node" --master-addr "${addresses[0]}" --master-port 29711 -- \
      bench allreduce --elements 2000000 --iterations "$ITERATIONS" > "$logs/$1-$node.log" 2>&1 &
  done
  wait
  echo "{\"link\": \"$1\", \"result\": $(grep -o '{.*}' "$logs/$1-0.log" | tail -1)}"
}

all_reduce clean
for node in 0 1; do
  ip netns exec "${hosts[$node]}" tc qdisc add dev "${ends[$node]}" root tbf rate "$RATE" burst 32kb latency 20ms
  printf 'table inet lossy {\n chain input {\n  type filter hook input priority 0;\n  meta l4proto tcp numgen random mod 100 < %s counter drop\n }\n}\n' "$LOSS" |
    ip netns exec "${hosts[$node]}" nft -f -
done
all_reduce "rate $RATE, $LOSS% lost"
dropped=0
for host in "${hosts[@]}"; do
  count=$(ip netns exec "$host" nft list table inet lossy | sed -n 's/.*counter packets \([0-9]*\).*/\1/p')
  dropped=$((dropped + count))
done
echo "{\"packets_dropped\": $dropped}"
