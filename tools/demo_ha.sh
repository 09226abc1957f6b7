#!/usr/bin/env bash
# The demo with more than one control plane (tools/demo.sh ha): a three-member etcd
# cluster on loopback, three control-plane replicas on it, a REST gateway and a node
# agent that dial all three, a local image server and a demo instance.
#   tools/demo.sh ha          start (again) and create the demo instance
#   tools/demo.sh ha stop     stop it all and delete its instances
#   tools/demo.sh ha kill     kill -9 the leader replica (the others take over)
# Everything it keeps lives under var/demo-ha/ in the checkout. Its ports (13200-13299),
# egress bridge and floating range do not clash with the one-replica demo's, so both may run.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
DEMO=$ROOT/var/demo-ha
CA=$DEMO/ca
ISSUED=$CA/issued
IMAGE_PORT=13280
REST=127.0.0.1:13200
REPLICAS=(1 2 3)
api() { echo "127.0.0.1:132${1}0"; }       # 13210, 13220, 13230: the public API
node_api() { echo "127.0.0.1:132${1}1"; }  # 13211, ...: the node listener
metrics() { echo "127.0.0.1:132${1}2"; }   # 13212, ...: Prometheus text
etcd_client() { echo "127.0.0.1:132${1}5"; }
etcd_peer() { echo "127.0.0.1:132${1}6"; }
APIS=$(for r in "${REPLICAS[@]}"; do api "$r"; done | paste -sd,)
NODE_APIS=$(for r in "${REPLICAS[@]}"; do node_api "$r"; done | paste -sd,)
ETCD_URLS=$(for r in "${REPLICAS[@]}"; do echo "https://$(etcd_client "$r")"; done | paste -sd,)
export MINICLOUD_API=$APIS MINICLOUD_NAMESPACE=system MINICLOUD_TLS_CA=$CA/ca.crt
mkdir -p "$DEMO"
if [ ! -s "$DEMO/system-key" ]; then
  (umask 077; head -c 18 /dev/urandom | base64 | tr '+/' '-_' >"$DEMO/system-key")
fi
MINICLOUD_KEY=$(cat "$DEMO/system-key")
export MINICLOUD_KEY

stop_all() {
  for pidfile in "$DEMO"/*.pid; do
    [ -f "$pidfile" ] || continue
    kill "$(cat "$pidfile")" 2>/dev/null || true
    rm -f "$pidfile"
  done
}

leader() {  # the replica whose metrics say it leads (empty if none answers)
  for r in "${REPLICAS[@]}"; do
    if curl -s "http://$(metrics "$r")/metrics" 2>/dev/null | grep -Eq '^minicloud_leader 1(\.0)?$'; then
      echo "$r"; return
    fi
  done
}

case "${1:-}" in
  stop)
    uuids=$(.venv/bin/minicloud --json instance list 2>/dev/null | .venv/bin/python -c \
      'import json,sys; print(" ".join(i["uuid"] for i in json.load(sys.stdin)))' 2>/dev/null || true)
    for uuid in $uuids; do .venv/bin/minicloud instance delete "$uuid" >/dev/null || true; done
    [ -z "$uuids" ] || sleep 3
    stop_all
    for folder in "$DEMO"/node/instances/*/; do
      [ -d "$folder" ] || continue
      uuid=$(basename "$folder")
      virsh -c qemu:///system destroy "$uuid" >/dev/null 2>&1 || true
      virsh -c qemu:///system undefine "$uuid" --nvram >/dev/null 2>&1 || true
      rm -rf "$folder"
    done
    echo "HA demo stopped"
    exit 0 ;;
  kill)
    r=$(leader)
    [ -n "$r" ] || { echo "no replica says it leads"; exit 1; }
    kill -9 "$(cat "$DEMO/controlplane-$r.pid")"
    rm -f "$DEMO/controlplane-$r.pid"
    echo "killed the leader, replica $r (restart it with: tools/demo.sh ha)"
    exit 0 ;;
esac

image=$(bash tools/install.sh | tail -n 1)
stop_all
rm -rf "$DEMO/node/image-cache"
mkdir -p "$DEMO/images" "$DEMO/node"
chmod 755 "$ROOT/var" "$DEMO" "$DEMO/node"
for name in debian-11 debian-12; do ln -sf "$image" "$DEMO/images/$name.qcow2"; done

start() {  # name, command...
  local name=$1; shift
  setsid nohup "$@" >"$DEMO/$name.log" 2>&1 </dev/null &
  echo $! >"$DEMO/$name.pid"
}
ca() { MINICLOUD_CA_DIR=$CA .venv/bin/minicloud-ca "$@"; }
if [ ! -f "$CA/ca.crt" ]; then
  echo "== making the cluster's CA and certificates in $CA"
  ca init
  ca issue-server controlplane --san 127.0.0.1 --san localhost
  ca issue-server gateway --san 127.0.0.1 --san localhost
  ca issue-server etcd --san 127.0.0.1 --san localhost
  # What the replicas show etcd (etcd asks its clients for a certificate of the CA).
  ca issue-node etcd-client
  ca issue-node demo-node
  ca issue-gateway rest-gateway
fi

echo "== etcd: three members on loopback (clients over TLS with the cluster's CA)"
cluster=$(for r in "${REPLICAS[@]}"; do echo "etcd$r=http://$(etcd_peer "$r")"; done | paste -sd,)
state=new
[ -d "$DEMO/etcd1/member" ] && state=existing
for r in "${REPLICAS[@]}"; do
  start "etcd$r" /usr/bin/etcd --name "etcd$r" --data-dir "$DEMO/etcd$r" \
    --listen-client-urls "https://$(etcd_client "$r")" \
    --advertise-client-urls "https://$(etcd_client "$r")" \
    --listen-peer-urls "http://$(etcd_peer "$r")" \
    --initial-advertise-peer-urls "http://$(etcd_peer "$r")" \
    --initial-cluster "$cluster" --initial-cluster-state "$state" \
    --trusted-ca-file "$CA/ca.crt" --cert-file "$ISSUED/etcd.crt" --key-file "$ISSUED/etcd.key" \
    --client-cert-auth --logger zap --log-level warn
done

# The replicas need an etcd that answers (a quorum, with a leader) to start.
for _ in $(seq 1 100); do
  curl -s --cacert "$CA/ca.crt" --cert "$ISSUED/etcd-client.crt" --key "$ISSUED/etcd-client.key" \
    "https://$(etcd_client 1)/health" 2>/dev/null | grep -q '"health":"true"' && break
  sleep 0.2
done

replica() {  # start replica r
  local r=$1
  MINICLOUD_STORE="etcd:$ETCD_URLS" \
  MINICLOUD_ETCD_CA=$CA/ca.crt MINICLOUD_ETCD_CERT=$ISSUED/etcd-client.crt \
  MINICLOUD_ETCD_KEY=$ISSUED/etcd-client.key \
  MINICLOUD_NAME="replica-$r" \
  MINICLOUD_TLS_CERT=$ISSUED/controlplane.crt MINICLOUD_TLS_KEY=$ISSUED/controlplane.key \
  MINICLOUD_LISTEN="$(api "$r")" MINICLOUD_NODE_LISTEN="$(node_api "$r")" \
  MINICLOUD_METRICS_LISTEN="$(metrics "$r")" \
  MINICLOUD_DATA_DIR="$DEMO/controlplane-$r" \
  MINICLOUD_TOKEN_SIGNING_KEY="$DEMO/token-signing-key" \
  MINICLOUD_SYSTEM_KEY=$MINICLOUD_KEY MINICLOUD_FLOATING_NETBLOCK=192.168.241.0/24 \
    start "controlplane-$r" .venv/bin/minicloud-controlplane
}
echo "== three control-plane replicas: $APIS"
replica 1
# The first replica makes the shared token signing key; the others use it.
for _ in $(seq 1 150); do [ -s "$DEMO/token-signing-key.pub" ] && break; sleep 0.2; done
replica 2
replica 3

MINICLOUD_GATEWAY_TLS_CERT=$ISSUED/gateway.crt MINICLOUD_GATEWAY_TLS_KEY=$ISSUED/gateway.key \
MINICLOUD_GATEWAY_TLS_CA=$CA/ca.crt \
MINICLOUD_GATEWAY_CLIENT_CERT=$ISSUED/rest-gateway.crt MINICLOUD_GATEWAY_CLIENT_KEY=$ISSUED/rest-gateway.key \
MINICLOUD_GATEWAY_LISTEN=$REST MINICLOUD_GATEWAY_API=$APIS \
MINICLOUD_GATEWAY_METRICS_LISTEN=127.0.0.1:13203 \
MINICLOUD_GATEWAY_TOKEN_PUBLIC_KEYS=$DEMO/token-signing-key.pub \
  start gateway .venv/bin/python -m gateway
MINICLOUD_NODE_TLS_CERT=$ISSUED/demo-node.crt MINICLOUD_NODE_TLS_KEY=$ISSUED/demo-node.key \
MINICLOUD_NODE_TLS_CA=$CA/ca.crt \
MINICLOUD_NODE_CONTROL_PLANE=$NODE_APIS MINICLOUD_NODE_NAME=demo-node \
MINICLOUD_NODE_NETWORK_EGRESS_BRIDGE=mcegressha MINICLOUD_NODE_NETWORK_NAME_PREFIX=mh \
MINICLOUD_NODE_DATA_DIR=$DEMO/node MINICLOUD_NODE_METRICS_LISTEN=127.0.0.1:13204 \
MINICLOUD_NODE_IMAGE_URL_TEMPLATE="http://127.0.0.1:$IMAGE_PORT/{name}-{version}.qcow2" \
  start nodeagent .venv/bin/minicloud-nodeagent
start images .venv/bin/python tools/serve_images.py --dir "$DEMO/images" --port $IMAGE_PORT

for _ in $(seq 1 100); do
  grep -q "connected to control plane" "$DEMO/nodeagent.log" 2>/dev/null && break
  sleep 0.2
done
for _ in $(seq 1 100); do [ -n "$(leader)" ] && break; sleep 0.2; done
echo "== the leader is replica $(leader)"

echo "== creating instance 'demo' (1 vCPU, 512 MiB, debian:11)"
.venv/bin/minicloud instance delete demo >/dev/null 2>&1 && sleep 3 || true
.venv/bin/minicloud instance create demo --cpus 1 --memory 512 \
  --disk size=2,base=debian:11 --side-channel sf-agent --wait
.venv/bin/minicloud instance list
cat <<EOT

The HA demo is running: three control-plane replicas ($APIS, TLS) on a three-member
etcd cluster, the REST gateway at https://$REST, node agent 'demo-node'. Every client
takes the list of replicas and moves on when one fails:
  export MINICLOUD_API=$APIS MINICLOUD_NAMESPACE=system MINICLOUD_KEY=$MINICLOUD_KEY
  export MINICLOUD_TLS_CA=$CA/ca.crt
  .venv/bin/minicloud instance list
  tools/demo.sh ha kill          # kill -9 the leader replica
  .venv/bin/minicloud instance list   # still answers; another replica leads within 5 s
  tools/demo.sh ha               # starts what is not running again
  tools/demo.sh ha stop
Which replica leads: curl -s http://$(metrics 1)/metrics | grep ^minicloud_leader (and $(metrics 2), $(metrics 3))
Logs: $DEMO/*.log
EOT
