#!/usr/bin/env bash
# Installs Open MPI from the distribution (mpirun + libmpi), for data-parallel training
# (docs/distributed.md) and its tests. Without it those tests skip and training runs alone.
set -euo pipefail
if command -v mpirun >/dev/null && ls /usr/lib/*/libmpi.so.* >/dev/null 2>&1; then
  echo "setup:mpi: $(mpirun --version 2>/dev/null | head -n 1) already installed"; exit 0
fi
. /etc/os-release 2>/dev/null || true
if ! { [ "${ID:-}" = debian ] || [ "${ID:-}" = ubuntu ] || [ "${ID_LIKE:-}" = debian ]; }; then
  echo "setup:mpi: unsupported distribution '${ID:-unknown}'. Install Open MPI (mpirun and libmpi) with your package manager." >&2
  exit 1
fi
cmd="DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends openmpi-bin libopenmpi-dev"
if [ "$(id -u)" != 0 ]; then
  echo "setup:mpi: needs root. Run as root: apt-get update && $cmd"; exit 1
fi
echo "+ $cmd"
bash -c "$cmd" || { apt-get update && bash -c "$cmd"; }
