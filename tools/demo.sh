#!/usr/bin/env bash
# Install everything, start a control plane, a node agent and a local image
# server, then create a demo instance and show its state and console.
#   tools/demo.sh          start (again) and create the demo instance
#   tools/demo.sh stop     stop the demo's processes and delete its instances
#   tools/demo.sh ha ...   three control-plane replicas on etcd instead (tools/demo_ha.sh)
# Everything the demo keeps lives under var/demo/ in the checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "ha" ]; then
  shift
  exec bash tools/demo_ha.sh "$@"
fi
ROOT=$(pwd)
DEMO=$ROOT/var/demo
API=127.0.0.1:13100
IMAGE_PORT=13080
REST=127.0.0.1:13000
# Metrics listeners (Prometheus text at /metrics), on loopback: control plane, gateway, node.
CP_METRICS=127.0.0.1:13102
REST_METRICS=127.0.0.1:13003
NODE_METRICS=127.0.0.1:13103
export MINICLOUD_API=$API
# The system namespace's key: made once, kept in var/demo/system-key (mode 0600).
mkdir -p "$DEMO"
if [ ! -s "$DEMO/system-key" ]; then
  (umask 077; head -c 18 /dev/urandom | base64 | tr '+/' '-_' >"$DEMO/system-key")
fi
export MINICLOUD_NAMESPACE=system
MINICLOUD_KEY=$(cat "$DEMO/system-key")
export MINICLOUD_KEY
# Every connection is TLS: the cluster's CA (var/demo/ca, made on first start by
# minicloud-ca) issues the servers' certificates, the node's and the gateway's; clients
# trust ca.crt.
NODE_API=127.0.0.1:13101
CA=$DEMO/ca
export MINICLOUD_TLS_CA=$CA/ca.crt

stop_demo() {
  for name in gateway nodeagent controlplane images; do
    if [ -f "$DEMO/$name.pid" ]; then
      kill "$(cat "$DEMO/$name.pid")" 2>/dev/null || true
      rm -f "$DEMO/$name.pid"
    fi
  done
}

if [ "${1:-}" = "stop" ]; then
  uuids=$(.venv/bin/minicloud --json instance list 2>/dev/null | .venv/bin/python -c \
    'import json,sys; print(" ".join(i["uuid"] for i in json.load(sys.stdin)))' 2>/dev/null || true)
  for uuid in $uuids; do
    .venv/bin/minicloud instance delete "$uuid" >/dev/null || true
  done
  [ -z "$uuids" ] || sleep 3
  stop_demo
  # Domains of the demo left behind (say, the control plane was already down).
  for folder in "$DEMO"/node/instances/*/; do
    [ -d "$folder" ] || continue
    uuid=$(basename "$folder")
    virsh -c qemu:///system destroy "$uuid" >/dev/null 2>&1 || true
    virsh -c qemu:///system undefine "$uuid" --nvram >/dev/null 2>&1 || true
    rm -rf "$folder"
  done
  echo "demo stopped"
  exit 0
fi

image=$(bash tools/install.sh | tail -n 1)
stop_demo
# The image may have been rebuilt since the last demo: fetch it afresh.
rm -rf "$DEMO/node/image-cache"
mkdir -p "$DEMO/images" "$DEMO/node"
chmod 755 "$ROOT/var" "$DEMO" "$DEMO/node"
for name in debian-11 debian-12; do ln -sf "$image" "$DEMO/images/$name.qcow2"; done

start() {  # name, command...
  local name=$1; shift
  # Their own session, so they outlive this script and its terminal.
  setsid nohup "$@" >"$DEMO/$name.log" 2>&1 </dev/null &
  echo $! >"$DEMO/$name.pid"
}
if [ ! -f "$CA/ca.crt" ]; then
  echo "== making the cluster's CA and certificates in $CA"
  MINICLOUD_CA_DIR=$CA .venv/bin/minicloud-ca init
  MINICLOUD_CA_DIR=$CA .venv/bin/minicloud-ca issue-server controlplane --san 127.0.0.1 --san localhost
  MINICLOUD_CA_DIR=$CA .venv/bin/minicloud-ca issue-server gateway --san 127.0.0.1 --san localhost
  MINICLOUD_CA_DIR=$CA .venv/bin/minicloud-ca issue-node demo-node
fi
ISSUED=$CA/issued
# The gateway's own certificate: with it the control plane believes the callers' addresses
# the gateway passes on (login backoff per caller). Made here too for older demo CAs.
if [ ! -f "$ISSUED/rest-gateway.crt" ]; then
  MINICLOUD_CA_DIR=$CA .venv/bin/minicloud-ca issue-gateway rest-gateway
fi
start images .venv/bin/python tools/serve_images.py --dir "$DEMO/images" --port $IMAGE_PORT
MINICLOUD_TLS_CERT=$ISSUED/controlplane.crt MINICLOUD_TLS_KEY=$ISSUED/controlplane.key \
MINICLOUD_NODE_LISTEN=$NODE_API \
MINICLOUD_LISTEN=$API MINICLOUD_DATA_DIR=$DEMO/controlplane MINICLOUD_SYSTEM_KEY=$MINICLOUD_KEY \
MINICLOUD_METRICS_LISTEN=$CP_METRICS \
  start controlplane .venv/bin/minicloud-controlplane
# The gateway checks tokens itself with the control plane's public token key, made on its
# first start.
TOKEN_PUB=$DEMO/controlplane/token-signing-key.pub
for _ in $(seq 1 100); do [ -s "$TOKEN_PUB" ] && break; sleep 0.1; done
MINICLOUD_GATEWAY_TLS_CERT=$ISSUED/gateway.crt MINICLOUD_GATEWAY_TLS_KEY=$ISSUED/gateway.key \
MINICLOUD_GATEWAY_TLS_CA=$CA/ca.crt \
MINICLOUD_GATEWAY_CLIENT_CERT=$ISSUED/rest-gateway.crt MINICLOUD_GATEWAY_CLIENT_KEY=$ISSUED/rest-gateway.key \
MINICLOUD_GATEWAY_LISTEN=$REST MINICLOUD_GATEWAY_API=$API MINICLOUD_GATEWAY_METRICS_LISTEN=$REST_METRICS \
MINICLOUD_GATEWAY_TOKEN_PUBLIC_KEYS=$TOKEN_PUB \
  start gateway .venv/bin/python -m gateway
MINICLOUD_NODE_TLS_CERT=$ISSUED/demo-node.crt MINICLOUD_NODE_TLS_KEY=$ISSUED/demo-node.key \
MINICLOUD_NODE_TLS_CA=$CA/ca.crt \
MINICLOUD_NODE_CONTROL_PLANE=$NODE_API MINICLOUD_NODE_NAME=demo-node \
MINICLOUD_NODE_DATA_DIR=$DEMO/node MINICLOUD_NODE_METRICS_LISTEN=$NODE_METRICS \
MINICLOUD_NODE_IMAGE_URL_TEMPLATE="http://127.0.0.1:$IMAGE_PORT/{name}-{version}.qcow2" \
  start nodeagent .venv/bin/minicloud-nodeagent

for _ in $(seq 1 50); do
  grep -q "connected to control plane" "$DEMO/nodeagent.log" 2>/dev/null && break
  sleep 0.2
done

echo "== creating instance 'demo' (1 vCPU, 512 MiB, debian:11 from the local image server)"
.venv/bin/minicloud instance delete demo >/dev/null 2>&1 && sleep 3 || true
.venv/bin/minicloud instance create demo --cpus 1 --memory 512 \
  --disk size=2,base=debian:11 --side-channel sf-agent --wait
uuid=$(.venv/bin/minicloud --json instance show demo | .venv/bin/python -c \
  'import json,sys; print(json.load(sys.stdin)["uuid"])')
console=$DEMO/node/instances/$uuid/console.log
echo "== waiting for the guest to boot (console: $console)"
for _ in $(seq 1 120); do
  grep -q "minicloud-guest: boot complete" "$console" 2>/dev/null && break
  sleep 1
done
echo "== console (last lines)"
tail -n 15 "$console" || true
echo "== waiting for the in-guest agent"
for _ in $(seq 1 120); do
  .venv/bin/minicloud --json instance show demo | grep -q '"agent_state": "ready"' && break
  sleep 1
done
echo "== minicloud instance execute demo \"cat /etc/os-release\""
.venv/bin/minicloud instance execute demo "cat /etc/os-release" || \
  echo "(the agent is not ready yet; try again in a moment)"
echo "== events"
.venv/bin/minicloud instance events demo --limit 10
cat <<EOT

The demo is running: control plane at $API (TLS), node agent 'demo-node' on $NODE_API.
Credentials (namespace system, key in $DEMO/system-key; the cluster's CA in $CA):
  export MINICLOUD_API=$API MINICLOUD_NAMESPACE=system MINICLOUD_KEY=$MINICLOUD_KEY
  export MINICLOUD_TLS_CA=$CA/ca.crt
  .venv/bin/minicloud instance list
  .venv/bin/minicloud instance execute demo "uname -a"
  .venv/bin/minicloud instance copy-to demo README.md /root/README.md
  .venv/bin/minicloud instance copy-from demo /etc/hostname ./hostname
  .venv/bin/minicloud instance poweroff demo; .venv/bin/minicloud instance poweron demo
  tools/demo.sh stop
Logs: $DEMO/*.log

The Shaken Fist REST gateway is at https://$REST; for shakenfist-client and sf-client
(requests trusts the cluster's CA through REQUESTS_CA_BUNDLE):
  export SHAKENFIST_API_URL=https://$REST SHAKENFIST_NAMESPACE=system SHAKENFIST_KEY=$MINICLOUD_KEY
  export REQUESTS_CA_BUNDLE=$CA/ca.crt
  .venv/bin/sf-client instance list

Prometheus metrics (plain HTTP on loopback; README "Metrics"):
  curl -s http://$CP_METRICS/metrics | grep ^minicloud_instances     # control plane
  curl -s http://$REST_METRICS/metrics | grep ^minicloud_http        # REST gateway
  curl -s http://$NODE_METRICS/metrics; curl -s http://$NODE_METRICS/readyz   # node agent
EOT
