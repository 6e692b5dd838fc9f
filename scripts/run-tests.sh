#!/usr/bin/env bash
# Set up everything the test suite needs on a fresh machine, then run the whole suite.
#   - installs this package (editable) with its test extra
#   - installs Debian's environment-modules (the `modules` tests load a real module), MPICH and Open MPI
#   - installs and starts the local Slurm cluster (4 virtual nodes) for the Slurm tests
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m pip install -q --disable-pip-version-check -e ".[test,plot]"
python3 -m compileall -q qcg_hier agents   # an editable install has no bytecode: every service start would compile

apt_install() {
    if [ "$(id -u)" != 0 ]; then
        echo "run-tests: not root, cannot install $*; the tests that need them will fail" >&2
        return 0
    fi
    if [ -z "${APT_UPDATED:-}" ]; then
        apt-get update -qq
        APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

[ -f /usr/share/modules/init/bash ] || apt_install environment-modules
command -v mpicc.mpich >/dev/null 2>&1 || apt_install mpich libmpich-dev   # the MPI test (srunmpi model)
{ command -v mpicc.openmpi && command -v mpirun.openmpi; } >/dev/null 2>&1 || apt_install openmpi-bin libopenmpi-dev   # the Open MPI test (openmpi model)

if [ "$(id -u)" = 0 ]; then
    scripts/slurm-cluster.sh install
    scripts/slurm-cluster.sh start 4 4
    eval "$(scripts/slurm-cluster.sh env)"
fi

exec python3 -m pytest -q "$@"
