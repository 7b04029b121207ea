#!/usr/bin/env bash
# Install the system packages the ssh/netns/slurm tests need: openssh-server (sshd, ssh-keygen),
# iproute2 (ip netns), pdsh (the fan-out peer scripts/bench_scale.py times), and Debian's Slurm
# (slurm-wlm: slurmctld, slurmd, srun, sbatch, ...) with munge (its authentication). Idempotent:
# installs only what is missing, runs `apt-get update` only when an install is needed. As
# non-root it prints what is missing and exits 0 (the tests then skip, or fail when CI is set).
set -euo pipefail

declare -A wanted=(
    [/usr/sbin/sshd]=openssh-server
    [/usr/bin/ssh-keygen]=openssh-client
    [/usr/sbin/ip]=iproute2
    [/usr/bin/curl]=curl
    [/usr/bin/pdsh]=pdsh
    [/usr/sbin/slurmctld]=slurm-wlm
    [/usr/sbin/slurmd]=slurm-wlm
    [/usr/bin/sbatch]=slurm-wlm
    [/usr/sbin/munged]=munge
    [/usr/bin/chromium]=chromium  # tests/test_status_html.py renders status.html headless
)

missing=()
for path in "${!wanted[@]}"; do
    pkg="${wanted[$path]}"
    if [[ ! -x "$path" ]] && ! command -v "$(basename "$path")" >/dev/null 2>&1; then
        [[ " ${missing[*]-} " == *" $pkg "* ]] || missing+=("$pkg")
    fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
    echo "ci_system_deps: nothing to do (sshd, ssh-keygen, ip, curl, pdsh, slurm, munge, chromium present)"
    exit 0
fi

if [[ "$(id -u)" -ne 0 ]]; then
    echo "ci_system_deps: not root; missing packages: ${missing[*]}"
    echo "ci_system_deps: as root run: apt-get install -y ${missing[*]}"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "ci_system_deps: no apt-get; install these by hand: ${missing[*]}" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# Update the package lists only when the candidate is unknown (fresh container with empty lists).
for pkg in "${missing[@]}"; do
    if ! apt-cache policy "$pkg" 2>/dev/null | grep -q 'Candidate: [^(]'; then
        echo "ci_system_deps: apt-get update"
        apt-get update -qq >/dev/null
        break
    fi
done
echo "ci_system_deps: installing ${missing[*]}"
log="$(mktemp)"
if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    exit 1
fi
rm -f "$log"
# Debian's postinst may start the system sshd (port 22), munged or slurmd where an init system
# runs; the tests start private ones (own key, socket, slurm.conf) and need none. Only report it.
echo "ci_system_deps: installed ${missing[*]}"
