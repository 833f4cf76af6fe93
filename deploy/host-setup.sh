#!/bin/sh
# One-time host setup for the compose stack on a Debian bookworm machine like this one
# (root, no systemd, no udev, no container registry). Idempotent; changes nothing that is
# already set up.
#   1. podman, runc, podman-compose, debootstrap from Debian's packages
#   2. /etc/containers/containers.conf: runc + cgroupfs + file events (crun fails on this
#      machine's hybrid cgroups), and the open-files limit (left alone if the file exists)
#   3. net.ipv4.conf.all.arp_notify=1, now and in /etc/sysctl.d (applied at boot where
#      systemd-sysctl or procps runs it). Why: a Linux bridge takes the lowest MAC of its
#      ports, so the podman bridge's MAC changes whenever a container whose veth has a lower
#      MAC joins or leaves. Containers that started earlier keep the old MAC for the gateway
#      (10.89.x.1: aardvark-dns, and the host side of the published port) in their ARP cache
#      for 15-45 s, and the bridge drops what they send there: their DNS lookups of the
#      other containers time out (a node's first lookup of its peer took 25-40 s and
#      failed). With arp_notify the host announces the new MAC (gratuitous ARP) at once.
#      Hosts where udev gives new bridges a fixed MAC (MACAddressPolicy=persistent, most
#      systemd distributions) do not have the problem.
# Usage: deploy/host-setup.sh   (as root)
set -eu
if [ "$(id -u)" != 0 ]; then
    echo "host-setup: run as root" >&2
    exit 1
fi
missing=""
for cmd in podman runc podman-compose debootstrap; do
    command -v "$cmd" >/dev/null 2>&1 || missing="$missing $cmd"
done
if [ -n "$missing" ]; then
    echo "host-setup: apt-get install$missing"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q podman runc podman-compose debootstrap
fi
if [ ! -e /etc/containers/containers.conf ]; then
    mkdir -p /etc/containers
    cat > /etc/containers/containers.conf <<'EOF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
    echo "host-setup: wrote /etc/containers/containers.conf"
else
    echo "host-setup: /etc/containers/containers.conf exists, left as it is"
fi
if [ "$(cat /proc/sys/net/ipv4/conf/all/arp_notify)" != 1 ]; then
    sysctl -q -w net.ipv4.conf.all.arp_notify=1
    echo "host-setup: net.ipv4.conf.all.arp_notify=1"
fi
if [ -d /etc/sysctl.d ] && [ ! -e /etc/sysctl.d/60-chatsrv-podman-bridge.conf ]; then
    cat > /etc/sysctl.d/60-chatsrv-podman-bridge.conf <<'EOF'
# Announce a bridge's new MAC at once (gratuitous ARP): podman's bridge changes MAC as
# containers join and leave, and containers would keep the old one cached (deploy/host-setup.sh).
net.ipv4.conf.all.arp_notify = 1
EOF
    echo "host-setup: wrote /etc/sysctl.d/60-chatsrv-podman-bridge.conf"
fi
podman --version
podman-compose --version 2>/dev/null | grep -i 'podman-compose' || true
