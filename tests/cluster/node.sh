#!/bin/sh
# OpenMPI's rsh agent for tests/cluster.rs (OMPI_MCA_plm_rsh_agent): where ssh would run a command
# on machine HOST, this runs it on "node" HOST of a cluster made on this machine: a UTS namespace
# whose host name is HOST (OpenMPI and shard-train tell nodes apart by host name). The nodes share
# this machine's network, reaching each other over lo (127.0.0.0/8, as the test's
# *_tcp_if_include=lo allow), and its file systems, except that CLUSTER_PRIVATE_DIR=HOST:DIR gives
# node HOST a mount namespace of its own with an empty tmpfs over DIR: a directory that node does
# not share with the others.
#   node.sh HOST WORDS...   (OpenMPI gives the remote command as words for a shell)
set -eu
host=$1
shift
case "${CLUSTER_PRIVATE_DIR:-}" in
  "$host":*)
    exec unshare --uts --mount --propagation private \
      sh -c 'hostname "$0" && mount -t tmpfs cluster-private "$1" && shift && exec sh -c "$*"' "$host" "${CLUSTER_PRIVATE_DIR#*:}" "$@"
    ;;
  *) exec unshare --uts sh -c 'hostname "$0" && exec sh -c "$*"' "$host" "$@" ;;
esac
