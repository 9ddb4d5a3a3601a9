#!/usr/bin/env bash
# Starts a private three-master Redis Cluster on free loopback ports (7001… up) without persistence,
# prints `host:port,host:port,host:port` on stdout. Stop it with: .ci/redis-cluster.sh stop <dir>
set -euo pipefail

if [ "${1:-}" = stop ]; then
  dir=$2
  for pidfile in "$dir"/*.pid; do [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true; done
  rm -rf "$dir"
  exit 0
fi

free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
dir=${1:?usage: redis-cluster.sh <dir> | stop <dir>}
mkdir -p "$dir"
ports=()
port=7001
while [ ${#ports[@]} -lt 3 ] && [ $port -lt 7600 ]; do
  if free "$port" && free $((port + 10000)); then ports+=("$port"); fi
  port=$((port + 1))
done
[ ${#ports[@]} -eq 3 ] || { echo "no free ports for the Redis Cluster" >&2; exit 1; }

for p in "${ports[@]}"; do
  redis-server --port "$p" --bind 127.0.0.1 --cluster-enabled yes --cluster-config-file "$dir/nodes-$p.conf" \
    --dir "$dir" --save '' --appendonly no --daemonize yes --pidfile "$dir/$p.pid" --logfile "$dir/$p.log"
done
for p in "${ports[@]}"; do
  for _ in $(seq 1 100); do redis-cli -p "$p" ping >/dev/null 2>&1 && break; sleep 0.1; done
done
nodes=$(printf '127.0.0.1:%s ' "${ports[@]}")
# shellcheck disable=SC2086
redis-cli --cluster create $nodes --cluster-replicas 0 --cluster-yes >"$dir/create.log"
for p in "${ports[@]}"; do
  for _ in $(seq 1 200); do redis-cli -p "$p" cluster info 2>/dev/null | grep -q 'cluster_state:ok' && break; sleep 0.1; done
done
echo "$nodes" | sed 's/ $//; s/ /,/g'
