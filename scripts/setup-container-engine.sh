#!/usr/bin/env bash
# setup-container-engine.sh - make a container engine and a Python 3.11 base image available,
# so that serving_image/Dockerfile can be built and run (tests/imaging/test_serving_image.py,
# the build-image and contract-check components).
#
# Idempotent; for a Debian/Ubuntu workstation and for CI (root there). Steps, each timed:
#
#   tools   curl, with which the tests call a running image as users do.
#   engine  If docker or podman already works (`info`, a tiny `run`, and for docker a BuildKit
#           build with secret and cache mounts, which serving_image/Dockerfile needs: a docker
#           CLI from 23.0 on without the buildx plugin fails it), use it and change nothing.
#           Otherwise apt-install podman (+ runc, conmon, netavark, aardvark-dns, iptables,
#           catatonit, fuse-overlayfs, ...; --no-install-recommends), write a containers.conf
#           drop-in for this host (runc on cgroup v1/hybrid hosts, where crun fails with
#           "cgroups in hybrid mode not supported"; cgroupfs and a file event log without
#           systemd/journald; default ulimits within the host's hard limits, since podman's
#           default of ~1M fails without CAP_SYS_RESOURCE) and verify `run`, `--init`,
#           `-p` port publishing and `build` with a 2 MB busybox image made from the host.
#           With TRAIN_TO_SERVE_ENGINE_SETUP=docker: Debian's docker.io instead (apt-installed
#           when there is no dockerd; its 20.10 CLI has BuildKit built in), dockerd started in
#           the background where no init system starts it (log: TRAIN_TO_SERVE_DOCKERD_LOG),
#           waited for, and the first docker CLI on PATH that builds chosen (printed as a path).
#   base    The image the serving image builds FROM (its BASE_IMAGE build argument):
#           docker.io/library/python:3.11-slim when it is present or can be pulled within
#           TRAIN_TO_SERVE_PULL_TIMEOUT; else localhost/train-to-serve-python:3.11, built once
#           from Debian packages (debootstrap minbase bookworm + python3, python3-venv,
#           ca-certificates, libgomp1 + security updates, slimmed, a venv at /opt/venv on PATH
#           so that `python` and `pip` work as in python:3.11-slim, with a current pip from PyPI
#           in place of Debian's 23.0.1 when PyPI can be reached). It is reused while its
#           io.train-to-serve.base-recipe label equals BASE_RECIPE below. For docker, podman's
#           copy of it is loaded (podman save | docker load) when podman has the current one.
#
# Usage:   scripts/setup-container-engine.sh            (root, or a user with password-less sudo)
#          eval "$(scripts/setup-container-engine.sh)"  (also exports the two variables below)
# Output:  progress, timings and errors on stderr; on stdout only
#            export TRAIN_TO_SERVE_CONTAINER_ENGINE=<docker|podman>
#            export TRAIN_TO_SERVE_BASE_IMAGE=<image>
#          The Python side (components/runners/engine.py) makes the same choice at run
#          time when these are not set, so exporting them is optional.
# Exit:    0 ready; 1 something failed (the message says what, the likely cause and the fix).
#
# Settings (environment; defaults in brackets):
#   TRAIN_TO_SERVE_CONTAINER_ENGINE [auto: docker, then podman]  use only this engine
#   TRAIN_TO_SERVE_ENGINE_SETUP     [podman]  what to set up when none works; docker = set up
#                                   Debian's docker.io and use docker even if podman works
#   TRAIN_TO_SERVE_DOCKERD_LOG      [/var/log/train-to-serve-dockerd.log]  dockerd started here
#   TRAIN_TO_SERVE_DOCKERD_TIMEOUT  [60]  seconds to wait for dockerd to answer
#   TRAIN_TO_SERVE_BASE_IMAGE       [auto]  use this base image as is (pulled if missing)
#   TRAIN_TO_SERVE_REGISTRY_BASE    [docker.io/library/python:3.11-slim]
#   TRAIN_TO_SERVE_LOCAL_BASE       [localhost/train-to-serve-python:3.11]
#   TRAIN_TO_SERVE_PULL_TIMEOUT     [30]  seconds allowed for pulling the registry base
#   TRAIN_TO_SERVE_REBUILD_BASE     [0]   1 = rebuild the local base even if it is current
#   TRAIN_TO_SERVE_CONFIGURE_PODMAN [0]   1 = install/configure/verify podman even if an
#                                         engine already works
#   TRAIN_TO_SERVE_CONTAINER_NOFILE [min(ulimit -Hn, 65536)]  default RLIMIT_NOFILE in containers
#   TRAIN_TO_SERVE_CONTAINER_NPROC  [4096]  default RLIMIT_NPROC in containers (<= 32768)
#   DEBIAN_MIRROR                   [http://deb.debian.org/debian]
#   DEBIAN_SECURITY_MIRROR          [http://deb.debian.org/debian-security]
#   TRAIN_TO_SERVE_SETUP_WORK_DIR   [/var/tmp/train-to-serve-setup]  scratch (rootfs, logs)
#   TRAIN_TO_SERVE_CA_BUNDLE        [the host's, e.g. /etc/ssl/certs/ca-certificates.crt]  CA
#                                   bundle pip uses while the base is built (TLS interception)
set -Eeuo pipefail

# CI may start this with `env -i` and no TTY: set everything relied on.
export PATH=${PATH:+$PATH:}/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8 LANG=C.UTF-8
umask 022

ENGINE_CHOICE=${TRAIN_TO_SERVE_CONTAINER_ENGINE:-}
ENGINE_SETUP=${TRAIN_TO_SERVE_ENGINE_SETUP:-podman}
DOCKERD_LOG=${TRAIN_TO_SERVE_DOCKERD_LOG:-/var/log/train-to-serve-dockerd.log}
DOCKERD_TIMEOUT=${TRAIN_TO_SERVE_DOCKERD_TIMEOUT:-60}
BASE_CHOICE=${TRAIN_TO_SERVE_BASE_IMAGE:-}
REGISTRY_BASE=${TRAIN_TO_SERVE_REGISTRY_BASE:-docker.io/library/python:3.11-slim}
LOCAL_BASE=${TRAIN_TO_SERVE_LOCAL_BASE:-localhost/train-to-serve-python:3.11}
PULL_TIMEOUT=${TRAIN_TO_SERVE_PULL_TIMEOUT:-30}
REBUILD_BASE=${TRAIN_TO_SERVE_REBUILD_BASE:-0}
CONFIGURE_PODMAN=${TRAIN_TO_SERVE_CONFIGURE_PODMAN:-0}
CONTAINER_NPROC=${TRAIN_TO_SERVE_CONTAINER_NPROC:-4096}
CONTAINER_NOFILE=${TRAIN_TO_SERVE_CONTAINER_NOFILE:-}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
DEBIAN_SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
WORK_DIR=${TRAIN_TO_SERVE_SETUP_WORK_DIR:-/var/tmp/train-to-serve-setup}

# Bump when the local base image's recipe changes (then it is rebuilt on the next run).
BASE_RECIPE=3
BASE_PIP=pip==26.3
BASE_LABEL=io.train-to-serve.base-recipe
# libgomp1: LightGBM's wheel needs libgomp.so.1; with it here the serving image's build runs no
# apt step (serving_image/Dockerfile installs it only on a base without it).
BASE_PACKAGES=python3,python3-venv,ca-certificates,libgomp1
SMOKE_IMAGE=localhost/train-to-serve-smoke:1
CONF_DROPIN=/etc/containers/containers.conf.d/60-train-to-serve.conf
DEBIAN_KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg

# Packages for rootful podman (+ what rootless podman needs). netavark is only recommended
# by Debian's podman, so with --no-install-recommends it must be named, or apt may pick the
# CNI plugins. Optional ones are skipped where the distribution lacks them (Ubuntu 22.04).
PODMAN_PKGS=(podman runc conmon iptables catatonit busybox-static ca-certificates)
PODMAN_PKGS_OPTIONAL=(netavark aardvark-dns fuse-overlayfs uidmap slirp4netns)
BASE_PKGS=(debootstrap debian-archive-keyring ca-certificates)

# ------------------------------------------------------------------ helpers --
PROG=setup-container-engine
T_START=${EPOCHREALTIME/./}
declare -a TIMINGS=()
log()  { printf '[%s %5.1fs] %s\n' "$PROG" "$(elapsed_s "$T_START")" "$*" >&2; }
elapsed_s() { local us=$(( ${EPOCHREALTIME/./} - $1 )); printf '%d.%d' $((us / 1000000)) $((us % 1000000 / 100000)); }
# fail WHAT CAUSE FIX [DETAIL]: print a clear error and exit 1.
fail() {
  {
    printf '\n[%s] ERROR: %s\n' "$PROG" "$1"
    [[ -n ${4:-} ]] && printf '%s\n' "$4" | tail -n 25 | sed 's/^/    | /'
    printf '  likely cause: %s\n  fix: %s\n' "$2" "$3"
  } >&2
  exit 1
}
# step NAME FUNC...: run one step function and record its wall time.
step() {
  local name=$1 t0=${EPOCHREALTIME/./}; shift
  "$@"
  TIMINGS+=("$(printf '%-28s %6ss' "$name" "$(elapsed_s "$t0")")")
}
on_error() {
  printf '\n[%s] ERROR: command failed (exit %s) at line %s: %s\n' "$PROG" "$1" "$2" "$3" >&2
  printf '  fix: see the messages above; rerun with "bash -x %s" for a trace\n' "$0" >&2
}
trap 'on_error $? $LINENO "$BASH_COMMAND"' ERR

# Privileged host operations (apt, /etc, debootstrap) run through $SUDO; the engine itself
# runs as the calling user, so that images land in the store the Python side will use.
SUDO=()
HAVE_ROOT=1
if [[ $(id -u) != 0 ]]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true >/dev/null 2>&1; then
    SUDO=(sudo -n)
  else
    HAVE_ROOT=0
  fi
fi
need_root() {  # need_root WHAT
  ((HAVE_ROOT)) || fail "cannot $1: this needs root and this user ($(id -un)) has no password-less sudo" \
    "the script was started as a normal user" "run it as root: sudo $0"
}
as_root() { "${SUDO[@]}" "$@"; }

# Run the engine with a time limit (a hung daemon must not hang CI).
eng() { timeout --kill-after=10 "${ENGINE_TIMEOUT:-120}" "$ENGINE" "$@"; }
image_exists() { eng image inspect "$1" >/dev/null 2>&1; }

# Only one copy at a time (make and CI may start it in parallel).
take_lock() {
  command -v flock >/dev/null 2>&1 || return 0
  local lock=/var/lock/train-to-serve-setup.lock
  [[ -w ${lock%/*} ]] || lock=${TMPDIR:-/tmp}/train-to-serve-setup-$(id -u).lock
  exec 9>"$lock"
  if ! flock -n 9; then
    log "waiting for another setup-container-engine.sh to finish ($lock)"
    flock -w 900 9 || fail "timed out waiting for $lock" "another setup run hangs" "end it, or delete $lock"
  fi
}

# ---------------------------------------------------------- smoke image --
# A tiny image made from the host's own files (no registry needed): static busybox when it is
# there (needed for the -p check's httpd), else /bin/true and the libraries it links.
make_smoke_image() {
  local e=$1 root
  "$e" image inspect "$SMOKE_IMAGE" >/dev/null 2>&1 && return 0
  root=$(mktemp -d "${TMPDIR:-/tmp}/tts-smoke.XXXXXX")
  mkdir -p "$root"/{bin,www,tmp,etc}
  if [[ -x /bin/busybox ]] && ! ldd /bin/busybox >/dev/null 2>&1; then
    cp /bin/busybox "$root/bin/busybox"
    local a
    for a in sh true echo cat httpd; do ln -sf busybox "$root/bin/$a"; done
  else
    local lib
    cp "$(command -v true)" "$root/bin/true"
    for lib in $(ldd "$(command -v true)" 2>/dev/null | grep -o '/[^ ]*'); do
      cp --parents -L "$lib" "$root"
    done
  fi
  echo ok > "$root/www/index.html"
  tar --numeric-owner -C "$root" -c . |
    timeout 120 "$e" import --change 'ENV PATH=/bin' --change 'CMD ["/bin/true"]' - "$SMOKE_IMAGE" >/dev/null
  local rc=$?
  rm -rf "$root"
  return $rc
}

# engine_works NAME: 0 when NAME answers `info` and runs a tiny container; else sets WHY.
WHY=""
engine_works() {
  local e=$1 out
  if ! command -v "$e" >/dev/null 2>&1; then WHY="$e: not installed"; return 1; fi
  if ! out=$(timeout 30 "$e" info 2>&1 >/dev/null); then
    WHY="$e is not usable ('$e info' failed: $(tail -n 3 <<<"$out" | tr '\n' ' '))"; return 1
  fi
  if ! out=$(make_smoke_image "$e" 2>&1); then WHY="$e import failed: $out"; return 1; fi
  if ! out=$(timeout 60 "$e" run --rm --network none "$SMOKE_IMAGE" /bin/true 2>&1); then
    WHY="$e run failed: $(tail -n 3 <<<"$out" | tr '\n' ' ')"; return 1
  fi
  if [[ ${e##*/} == docker* ]]; then docker_builds "$e" || return 1; fi
  return 0
}

# docker_builds CLI: 0 when CLI builds with BuildKit secret and cache mounts; else sets WHY.
# The check of components/runners/engine.py (BUILD_CHECK_DOCKERFILE): the mounts are parsed, not
# run, so nothing is pulled and the result is the same empty image every time.
docker_builds() {
  local cli=$1 ctx out
  ctx=$(mktemp -d "${TMPDIR:-/tmp}/tts-build-check.XXXXXX")
  printf 'FROM scratch AS mounts\nRUN --mount=type=secret,id=check --mount=type=cache,target=/cache true\nFROM scratch\n' \
    > "$ctx/Dockerfile"
  : > "$ctx/secret"
  if out=$(DOCKER_BUILDKIT=1 timeout 60 "$cli" build -q -t localhost/train-to-serve-build-check:1 \
      --secret "id=check,src=$ctx/secret" "$ctx" 2>&1); then
    rm -rf "$ctx"; return 0
  fi
  rm -rf "$ctx"
  WHY="$cli answers but cannot build with BuildKit secret and cache mounts: $(tail -n 3 <<<"$out" | tr '\n' ' ')"
  return 1
}

# --------------------------------------------------------------- engine --
ENGINE=""
step_engine() {
  local candidates=(docker podman) reasons=() e
  [[ -n $ENGINE_CHOICE ]] && candidates=("$ENGINE_CHOICE")
  if [[ $CONFIGURE_PODMAN != 1 ]]; then
    for e in "${candidates[@]}"; do
      if engine_works "$e"; then
        ENGINE=$e
        log "engine: $e works ($(engine_version)); nothing to install"
        return 0
      fi
      reasons+=("$WHY")
      log "engine: $WHY"
    done
  fi
  if [[ -n $ENGINE_CHOICE && $ENGINE_CHOICE != *podman ]]; then
    fail "TRAIN_TO_SERVE_CONTAINER_ENGINE=$ENGINE_CHOICE does not work: ${reasons[*]}" \
      "its daemon is not running, or this user may not use it" \
      "start it (e.g. 'systemctl start docker'; add yourself to the docker group), or unset the variable to let the script set up podman"
  fi
  log "engine: setting up podman"
  step "engine: apt packages" install_podman_packages
  step "engine: podman config" configure_podman
  ENGINE=${ENGINE_CHOICE:-podman}
  step "engine: verify" verify_podman
}

# TRAIN_TO_SERVE_ENGINE_SETUP=docker: Debian's docker.io, its daemon running, and the first
# docker CLI on PATH that builds (a newer one without buildx may come before /usr/bin/docker).
step_docker_engine() {
  if [[ -n $ENGINE_CHOICE && ${ENGINE_CHOICE##*/} != docker* ]]; then
    fail "TRAIN_TO_SERVE_ENGINE_SETUP=docker but TRAIN_TO_SERVE_CONTAINER_ENGINE=$ENGINE_CHOICE" \
      "the two ask for different engines" "unset one of them"
  fi
  command -v dockerd >/dev/null 2>&1 || step "engine: apt packages" apt_install docker.io
  step "engine: dockerd" ensure_dockerd
  local candidates=() reasons=() cli
  if [[ -n $ENGINE_CHOICE ]]; then candidates=("$ENGINE_CHOICE")
  else mapfile -t candidates < <(type -ap docker | awk '!seen[$0]++')
  fi
  for cli in "${candidates[@]}"; do
    if engine_works "$cli"; then
      ENGINE=$cli
      log "engine: $cli works and builds ($(engine_version))"
      return 0
    fi
    reasons+=("$WHY")
    log "engine: $WHY"
  done
  fail "no docker CLI here builds serving_image/Dockerfile (BuildKit secret and cache mounts)" \
    "${reasons[*]:-no docker CLI on PATH}" \
    "install Docker's buildx plugin (https://docs.docker.com/go/buildx/), or name Debian's docker.io CLI in TRAIN_TO_SERVE_CONTAINER_ENGINE=/usr/bin/docker; or set up podman instead (unset TRAIN_TO_SERVE_ENGINE_SETUP)"
}

dockerd_answers() { timeout 10 docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

# Start the docker daemon where nothing has: systemd where it runs, else dockerd in the
# background in its own session (its output in $DOCKERD_LOG); then wait until it answers.
ensure_dockerd() {
  local pid
  if dockerd_answers; then log "dockerd: answers"; return 0; fi
  need_root "start dockerd"
  if [[ -d /run/systemd/system ]]; then
    log "dockerd: systemctl start docker"
    as_root systemctl start docker ||
      fail "systemctl start docker failed" "see 'systemctl status docker'" "journalctl -u docker shows why"
  elif pid=$(cat /var/run/docker.pid 2>/dev/null) && [[ -d /proc/$pid ]]; then
    log "dockerd: already starting (pid $pid)"
  else
    log "dockerd: starting it in the background (no init system does here); log: $DOCKERD_LOG"
    # Not holding this script's lock (fd 9), which would keep every later run waiting.
    # shellcheck disable=SC2016  # expanded by the inner bash
    as_root bash -c 'setsid -f dockerd >>"$1" 2>&1 </dev/null 9>&-' _ "$DOCKERD_LOG"
  fi
  local deadline=$((SECONDS + DOCKERD_TIMEOUT))
  until dockerd_answers; do
    ((SECONDS < deadline)) || fail "dockerd did not answer within ${DOCKERD_TIMEOUT}s" \
      "it failed to start (storage driver, iptables, or another dockerd holding /var/run/docker.pid)" \
      "read $DOCKERD_LOG; raise TRAIN_TO_SERVE_DOCKERD_TIMEOUT if it is only slow" \
      "$(as_root tail -n 20 "$DOCKERD_LOG" 2>/dev/null)"
    sleep 0.5
  done
  log "dockerd: answers"
}

engine_version() {
  local v
  v=$("$ENGINE" version --format '{{.Server.Version}}' 2>/dev/null) ||
    v=$("$ENGINE" version --format '{{.Client.Version}}' 2>/dev/null) || v='?'
  printf '%s %s' "$ENGINE" "$v"
}

pkg_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
pkg_available() { [[ $(apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2}') =~ ^[0-9] ]]; }

# apt_install PKG... (optional packages prefixed with '?'): install what is missing.
apt_install() {
  command -v apt-get >/dev/null 2>&1 ||
    fail "cannot install $*: apt-get not found" "this is not a Debian/Ubuntu machine" \
      "install podman (or docker) with your distribution's tools, then rerun"
  local want=() missing=() p opt updated=0
  for p in "$@"; do
    opt=0; [[ $p == '?'* ]] && { opt=1; p=${p#?}; }
    pkg_installed "$p" && continue
    if ! pkg_available "$p" && ((!updated)); then
      need_root "run apt-get update"
      log "apt-get update"
      as_root apt-get update -qq -o DPkg::Lock::Timeout=300 >&2 ||
        fail "apt-get update failed" "no network to the Debian/Ubuntu mirror, or a broken sources.list" \
          "check 'apt-get update' by hand"
      updated=1
    fi
    if pkg_available "$p"; then missing+=("$p")
    elif ((!opt)); then want+=("$p")
    fi
  done
  ((${#want[@]} == 0)) ||
    fail "packages not available from apt: ${want[*]}" "this distribution release does not ship them" \
      "use Debian 12+/Ubuntu 24.04+, or install podman yourself and rerun"
  ((${#missing[@]})) || { log "apt: all of $* present"; return 0; }
  need_root "install ${missing[*]}"
  log "apt: installing ${missing[*]}"
  local out
  out=$(as_root apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=300 "${missing[@]}" 2>&1) || {
    log "apt: install failed, retrying after apt-get update"
    as_root apt-get update -qq -o DPkg::Lock::Timeout=300 >&2 || true
    out=$(as_root apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=300 "${missing[@]}" 2>&1) ||
      fail "apt-get install ${missing[*]} failed" "mirror unreachable, dpkg lock held, or a broken package" \
        "run 'apt-get install --no-install-recommends ${missing[*]}' by hand and read its error" "$out"
  }
}

install_podman_packages() {
  local opt=() p
  for p in "${PODMAN_PKGS_OPTIONAL[@]}"; do opt+=("?$p"); done
  apt_install "${PODMAN_PKGS[@]}" "${opt[@]}"
}

configure_podman() {
  local hard_nofile hard_nproc nofile=$CONTAINER_NOFILE nproc=$CONTAINER_NPROC
  hard_nofile=$(ulimit -Hn); hard_nproc=$(ulimit -Hu)
  if [[ -z $nofile ]]; then
    nofile=65536
    [[ $hard_nofile != unlimited ]] && ((hard_nofile < nofile)) && nofile=$hard_nofile
  fi
  [[ $hard_nproc != unlimited ]] && ((hard_nproc < nproc)) && nproc=$hard_nproc
  ((nproc > 32768)) && nproc=32768
  local engine_lines=() fs; fs=$(stat -fc %T /sys/fs/cgroup 2>/dev/null || echo unknown)
  if [[ $fs != cgroup2fs ]]; then
    engine_lines+=("# cgroup v1/hybrid host ($fs): crun fails with \"cgroups in hybrid mode not supported\"."
                   'runtime = "runc"')
  fi
  if [[ ! -d /run/systemd/system ]]; then
    engine_lines+=('# No systemd as PID 1: plain cgroupfs, and a file event log instead of journald.'
                   'cgroup_manager = "cgroupfs"' 'events_logger = "file"')
  fi
  local want
  want=$(
    echo "# Written by train-to-serve scripts/setup-container-engine.sh; overrides containers.conf."
    echo "[containers]"
    echo "# podman raises RLIMIT_NOFILE/NPROC to ~1M by default; without CAP_SYS_RESOURCE that"
    echo "# fails (\"error setting rlimit type 7: operation not permitted\"). Stay within the host's"
    echo "# hard limits (ulimit -Hn $hard_nofile, -Hu $hard_nproc; nproc <= 32768 for conmon)."
    echo "default_ulimits = [\"nofile=$nofile:$nofile\", \"nproc=$nproc:$nproc\"]"
    if ((${#engine_lines[@]})); then echo; echo "[engine]"; printf '%s\n' "${engine_lines[@]}"; fi
    if command -v netavark >/dev/null 2>&1 || [[ -x /usr/lib/podman/netavark ]]; then
      echo; echo "[network]"; echo 'network_backend = "netavark"'
    fi
  )
  if [[ -f $CONF_DROPIN ]] && [[ "$(cat "$CONF_DROPIN")" == "$want" ]]; then
    log "config: $CONF_DROPIN up to date"
  else
    need_root "write $CONF_DROPIN"
    as_root mkdir -p "${CONF_DROPIN%/*}"
    printf '%s\n' "$want" | as_root tee "$CONF_DROPIN.tmp" >/dev/null
    as_root mv "$CONF_DROPIN.tmp" "$CONF_DROPIN"
    log "config: wrote $CONF_DROPIN"
  fi
  # Published ports need IPv4 forwarding (netavark sets it too; harmless).
  as_root sysctl -qw net.ipv4.ip_forward=1 >/dev/null 2>&1 || true
  if [[ $(id -u) != 0 ]]; then ensure_subuids; fi
}

# Rootless podman needs subordinate uid/gid ranges for the user.
ensure_subuids() {
  local user; user=$(id -un)
  if ! grep -q "^$user:" /etc/subuid 2>/dev/null || ! grep -q "^$user:" /etc/subgid 2>/dev/null; then
    need_root "add subordinate uid/gid ranges for $user (rootless podman)"
    as_root usermod --add-subuids 100000-165535 --add-subgids 100000-165535 "$user"
    podman system migrate >/dev/null 2>&1 || true
    log "config: added /etc/subuid and /etc/subgid ranges for $user"
  fi
}

# Turn an engine error into a likely cause and a fix, then exit.
diagnose() {  # diagnose WHAT OUTPUT
  local what=$1 out=$2 cause fix
  case $out in
    *"cgroups in hybrid mode not supported"*)
      cause="crun cannot run on this cgroup v1/hybrid host"
      fix="set runtime = \"runc\" in $CONF_DROPIN (rerun with TRAIN_TO_SERVE_CONFIGURE_PODMAN=1)" ;;
    *rlimit*"not permitted"*|*RLIMIT*"not permitted"*)
      cause="podman raises rlimits above what this host allows (no CAP_SYS_RESOURCE)"
      fix="lower TRAIN_TO_SERVE_CONTAINER_NOFILE (<= $(ulimit -Hn)) / TRAIN_TO_SERVE_CONTAINER_NPROC (<= 32768) and rerun" ;;
    *overlay*|*mount_program*|*"kernel does not support"*)
      cause="overlay storage does not work on this filesystem"
      fix="set driver = \"vfs\" in /etc/containers/storage.conf (slow), or put /var/lib/containers on ext4/xfs" ;;
    *"address already in use"*|*"cannot listen on the TCP port"*)
      cause="the host port is taken"; fix="free it; the project publishes random ports (-p 127.0.0.1::PORT)" ;;
    *netavark*|*iptables*|*nftables*|*"network"*|*"no answer"*)
      cause="container networking (netavark/iptables port forwarding) failed"
      fix="check 'iptables -t nat -L' and that iptables, netavark and aardvark-dns are installed" ;;
    *"permission denied"*|*"must be root"*|*EPERM*|*"newuidmap"*)
      cause="missing privileges (uid $(id -u)); rootless podman also needs /etc/subuid entries and uidmap"
      fix="run as root (sudo $0), or install uidmap and add subuid/subgid ranges" ;;
    *"no such host"*|*"pinging container registry"*|*"connection refused"*)
      cause="an image was looked up in a registry that cannot be reached"
      fix="the check images are local; rerun with TRAIN_TO_SERVE_CONFIGURE_PODMAN=1 to rebuild them" ;;
    *) cause="unknown"; fix="run the failing command by hand with 'podman --log-level=debug'" ;;
  esac
  fail "podman cannot $what" "$cause" "$fix" \
    "$out"$'\n'"host: podman $(podman version --format '{{.Client.Version}}' 2>/dev/null || echo '?'), cgroup fs $(stat -fc %T /sys/fs/cgroup 2>/dev/null), uid $(id -u), ulimit -Hn $(ulimit -Hn)"
}

# GET http://127.0.0.1:PORT/ with bash's /dev/tcp only (curl may be missing).
http_get_body() {
  # shellcheck disable=SC2016
  timeout 3 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1" &&
    printf "GET / HTTP/1.0\r\nHost: localhost\r\n\r\n" >&3 && cat <&3' _ "$1" 2>/dev/null | sed '1,/^\r$/d'
}

verify_podman() {
  local out name=tts-setup-check-$$ port="" body="" ctx
  out=$(podman info --format '{{.Host.OCIRuntime.Name}} {{.Host.CgroupManager}} {{.Store.GraphDriverName}}' 2>&1) ||
    diagnose "start (podman info)" "$out"
  log "verify: runtime/cgroups/storage = $out"
  podman image rm -f "$SMOKE_IMAGE" >/dev/null 2>&1 || true  # rebuilt from this host's busybox
  out=$(make_smoke_image podman 2>&1) || diagnose "import an image" "$out"
  if ! out=$(podman run --rm --init --network none "$SMOKE_IMAGE" sh -c 'echo ran' 2>&1) || [[ $out != *ran* ]]; then
    diagnose "run a container (with --init)" "$out"
  fi
  podman rm -f -t 0 "$name" >/dev/null 2>&1 || true
  out=$(podman run -d --name "$name" -p 127.0.0.1::8080 "$SMOKE_IMAGE" httpd -f -p 8080 -h /www 2>&1) ||
    diagnose "publish a port (-p)" "$out"
  port=$(podman port "$name" 8080/tcp 2>/dev/null | head -n 1 | sed 's/.*://')
  for _ in $(seq 1 50); do
    body=$(http_get_body "$port") && [[ $body == ok ]] && break
    sleep 0.1
  done
  podman rm -f -t 0 "$name" >/dev/null 2>&1 || true
  [[ $body == ok ]] ||
    diagnose "publish a port (-p)" "GET http://127.0.0.1:$port/ got no answer from the container's httpd"
  ctx=$(mktemp -d "${TMPDIR:-/tmp}/tts-build-check.XXXXXX")
  printf 'FROM %s\nRUN echo built > /built\n' "$SMOKE_IMAGE" > "$ctx/Dockerfile"
  out=$(podman build --pull=never --network none -q -t localhost/tts-setup-check:latest "$ctx" 2>&1) ||
    { rm -rf "$ctx"; diagnose "build an image (RUN)" "$out"; }
  rm -rf "$ctx"
  podman image rm -f localhost/tts-setup-check:latest >/dev/null 2>&1 || true
  log "verify: OK (run, --init, -p port publishing, build)"
}

# ----------------------------------------------------------------- base --
BASE=""
BASE_WHY=""
step_base() {
  if [[ -n $BASE_CHOICE ]]; then
    if ! image_exists "$BASE_CHOICE"; then
      log "base: pulling $BASE_CHOICE (TRAIN_TO_SERVE_BASE_IMAGE)"
      local out
      out=$(ENGINE_TIMEOUT=600 eng pull -q "$BASE_CHOICE" 2>&1) ||
        fail "TRAIN_TO_SERVE_BASE_IMAGE=$BASE_CHOICE is not present and cannot be pulled" \
          "wrong name, or its registry is unreachable" "fix or unset the variable" "$out"
    fi
    BASE=$BASE_CHOICE BASE_WHY="TRAIN_TO_SERVE_BASE_IMAGE"
    return 0
  fi
  if image_exists "$REGISTRY_BASE"; then
    BASE=$REGISTRY_BASE BASE_WHY="present locally"; log "base: $REGISTRY_BASE is present"; return 0
  fi
  log "base: trying to pull $REGISTRY_BASE (up to ${PULL_TIMEOUT}s)"
  local out
  if out=$(ENGINE_TIMEOUT=$PULL_TIMEOUT eng pull -q "$REGISTRY_BASE" 2>&1); then
    BASE=$REGISTRY_BASE BASE_WHY="pulled"; log "base: pulled $REGISTRY_BASE"; return 0
  fi
  log "base: cannot pull $REGISTRY_BASE: $(tail -n 1 <<<"$out" | cut -c1-200)"
  local have
  have=$(eng image inspect --format "{{index .Config.Labels \"$BASE_LABEL\"}}" "$LOCAL_BASE" 2>/dev/null || true)
  if [[ $have == "$BASE_RECIPE" && $REBUILD_BASE != 1 ]]; then
    log "base: reusing $LOCAL_BASE (recipe $BASE_RECIPE)"
  elif [[ $REBUILD_BASE != 1 ]] && copy_base_from_podman; then
    log "base: loaded podman's $LOCAL_BASE (recipe $BASE_RECIPE) into $ENGINE"
  else
    [[ -n $have ]] && log "base: $LOCAL_BASE has recipe '$have', want '$BASE_RECIPE' (or rebuild asked): rebuilding"
    build_local_base
  fi
  BASE=$LOCAL_BASE BASE_WHY="built locally from Debian packages; $REGISTRY_BASE cannot be pulled"
}

# docker: load podman's copy of the local base when it has the current recipe (seconds, where
# building it again takes a minute).
copy_base_from_podman() {
  [[ ${ENGINE##*/} == docker* ]] && command -v podman >/dev/null 2>&1 || return 1
  local have out
  have=$(podman image inspect --format "{{index .Config.Labels \"$BASE_LABEL\"}}" "$LOCAL_BASE" 2>/dev/null) || return 1
  [[ $have == "$BASE_RECIPE" ]] || return 1
  log "base: podman save $LOCAL_BASE | $ENGINE load"
  out=$({ timeout 600 podman save "$LOCAL_BASE" | ENGINE_TIMEOUT=600 eng load; } 2>&1) && return 0
  log "base: loading podman's copy failed ($(tail -n 1 <<<"$out")); building it instead"
  return 1
}

# Unmount whatever is still mounted below DIR (a failed chroot step), then delete it.
safe_rm_tree() {
  local dir=$1 m
  [[ -n $dir && -d $dir ]] || return 0
  while read -r m; do as_root umount -l "$m" 2>/dev/null || true
  done < <(awk -v d="$dir" '$2 == d || index($2, d "/") == 1 {print $2}' /proc/self/mounts | sort -r)
  as_root rm -rf --one-file-system "$dir"
}

ROOTFS=""
build_local_base() {
  need_root "build $LOCAL_BASE with debootstrap"
  step "base: apt packages" apt_install "${BASE_PKGS[@]}"
  as_root mkdir -p "$WORK_DIR"
  ROOTFS=$(as_root mktemp -d "$WORK_DIR/rootfs.XXXXXX")
  trap 'safe_rm_tree "$ROOTFS"' EXIT
  local keyring=()
  [[ -f $DEBIAN_KEYRING ]] && keyring=(--keyring="$DEBIAN_KEYRING")
  log "base: debootstrap --variant=minbase bookworm + $BASE_PACKAGES (log: $WORK_DIR/debootstrap.log)"
  step "base: debootstrap" run_logged "$WORK_DIR/debootstrap.log" \
    "debootstrap of Debian bookworm failed" \
    "the mirror $DEBIAN_MIRROR cannot be reached, or the Debian archive keyring is missing" \
    "check 'apt-get update' works, set DEBIAN_MIRROR to a reachable Debian mirror, or install debian-archive-keyring; or make $REGISTRY_BASE pullable" \
    debootstrap --variant=minbase --include="$BASE_PACKAGES" "${keyring[@]}" bookworm "$ROOTFS" "$DEBIAN_MIRROR"
  printf 'deb %s bookworm main\ndeb %s bookworm-updates main\ndeb %s bookworm-security main\n' \
    "$DEBIAN_MIRROR" "$DEBIAN_MIRROR" "$DEBIAN_SECURITY_MIRROR" | as_root tee "$ROOTFS/etc/apt/sources.list" >/dev/null
  log "base: applying bookworm-updates and bookworm-security"
  as_root mount -t proc proc "$ROOTFS/proc"
  printf '#!/bin/sh\nexit 101\n' | as_root tee "$ROOTFS/usr/sbin/policy-rc.d" >/dev/null
  as_root chmod +x "$ROOTFS/usr/sbin/policy-rc.d"
  step "base: security updates" run_logged "$WORK_DIR/upgrade.log" \
    "apt-get upgrade in the base rootfs failed" \
    "$DEBIAN_MIRROR or $DEBIAN_SECURITY_MIRROR cannot be reached" \
    "set DEBIAN_MIRROR / DEBIAN_SECURITY_MIRROR to reachable mirrors and rerun" \
    chroot "$ROOTFS" sh -c 'apt-get update -qq && apt-get -y -qq upgrade'
  # Debian's python3 is "externally managed" (PEP 668) and has no python/pip commands: a venv
  # on PATH makes `python` and `pip install` behave as in python:3.11-slim.
  step "base: venv" run_logged "$WORK_DIR/venv.log" "creating /opt/venv in the base failed" \
    "python3-venv is missing from the rootfs" "rerun with TRAIN_TO_SERVE_REBUILD_BASE=1" \
    chroot "$ROOTFS" sh -c '/usr/bin/python3 -m venv /opt/venv && /opt/venv/bin/python -m pip --version'
  step "base: pip upgrade" upgrade_base_pip
  as_root umount "$ROOTFS/proc"
  as_root rm -f "$ROOTFS/usr/sbin/policy-rc.d"
  slim_rootfs
  log "base: importing as $LOCAL_BASE"
  step "base: import" import_rootfs
  safe_rm_tree "$ROOTFS"; trap - EXIT
}

# The host's CA bundle: pip in the chroot needs it where TLS to PyPI is intercepted.
host_ca_bundle() {
  local c
  if [[ -n ${TRAIN_TO_SERVE_CA_BUNDLE+x} ]]; then
    [[ -n $TRAIN_TO_SERVE_CA_BUNDLE && $TRAIN_TO_SERVE_CA_BUNDLE != none ]] && echo "$TRAIN_TO_SERVE_CA_BUNDLE"
    return 0
  fi
  for c in /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt; do
    [[ -f $c ]] && { echo "$c"; return 0; }
  done
}

# Debian's python3-venv seeds pip 23.0.1; a current pip from PyPI behaves like the one in
# python:3.11-slim (truststore, resolver fixes). Without PyPI the base keeps Debian's pip.
upgrade_base_pip() {
  local ca env=()
  ca=$(host_ca_bundle || true)
  if [[ -n $ca ]]; then
    as_root cp "$ca" "$ROOTFS/tmp/host-ca.crt"
    env=(PIP_CERT=/tmp/host-ca.crt)
  fi
  if as_root chroot "$ROOTFS" env "${env[@]}" PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
      /opt/venv/bin/python -m pip install -q --upgrade "$BASE_PIP" > "$WORK_DIR/pip.log" 2>&1; then
    log "base: $(as_root chroot "$ROOTFS" /opt/venv/bin/python -m pip --version | cut -d' ' -f1-2)"
  else
    log "base: WARNING: could not install $BASE_PIP from PyPI (see $WORK_DIR/pip.log); keeping Debian's pip"
  fi
  as_root rm -f "$ROOTFS/tmp/host-ca.crt"
}

# run_logged LOG WHAT CAUSE FIX CMD...: run CMD as root with its output in LOG; on failure show
# the log's tail with the cause and the fix.
run_logged() {
  local logf=$1 what=$2 cause=$3 fix=$4; shift 4
  # shellcheck disable=SC2016  # expanded by the inner bash
  as_root bash -c 'log=$1; shift; "$@" >"$log" 2>&1' _ "$logf" "$@" ||
    fail "$what" "$cause" "$fix (full log: $logf)" "$(as_root tail -n 25 "$logf" 2>/dev/null)"
}

# Slim as Docker's debian:*-slim does: no apt lists/caches, docs, man pages or locales. The dpkg
# excludes also apply to `apt-get install` in images built on top.
slim_rootfs() {
  as_root tee "$ROOTFS/etc/dpkg/dpkg.cfg.d/01-train-to-serve-slim" >/dev/null <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
EOF
  as_root chroot "$ROOTFS" apt-get clean
  # shellcheck disable=SC2016  # expanded by the inner sh
  as_root sh -c 'cd "$1" && rm -rf var/lib/apt/lists/* var/cache/apt/*.bin var/cache/debconf/*-old \
      var/log/*.log var/log/apt/* tmp/* usr/share/man/* usr/share/info/* usr/share/locale/* &&
    find usr/share/doc -type f ! -name copyright -delete &&
    : > etc/resolv.conf && : > etc/hostname' _ "$ROOTFS"
}

# `import` sets no config: give the image python:3.11-slim's PATH/LANG/CMD and the recipe label.
import_rootfs() {
  local out
  out=$(as_root tar --numeric-owner -C "$ROOTFS" -c . |
    eng import \
      --change 'ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'ENV VIRTUAL_ENV=/opt/venv' \
      --change 'ENV LANG=C.UTF-8' \
      --change "LABEL $BASE_LABEL=$BASE_RECIPE" \
      --change 'LABEL org.opencontainers.image.description=Debian bookworm minbase + python3 + /opt/venv (train-to-serve)' \
      --change 'CMD ["python3"]' \
      -m "train-to-serve setup-container-engine.sh: debootstrap bookworm minbase + $BASE_PACKAGES + /opt/venv" \
      - "$LOCAL_BASE" 2>&1) ||
    fail "importing the base rootfs as $LOCAL_BASE failed" "engine storage problem or disk full" \
      "check 'df -h' and '$ENGINE info'" "$out"
}

check_base() {
  local out
  out=$(eng run --rm --network none "$BASE" sh -c \
    'python -c "import ssl, sys, venv; print(\"python\", sys.version.split()[0], ssl.OPENSSL_VERSION)" && pip --version' 2>&1) ||
    fail "$BASE cannot run python and pip" "a broken base image" \
      "rebuild it: TRAIN_TO_SERVE_REBUILD_BASE=1 $0" "$out"
  log "base: $BASE: $(tr '\n' ' ' <<<"$out" | cut -c1-160)"
}

# ----------------------------------------------------------------- main --
main() {
  take_lock
  log "start (uid $(id -u), $(sed -n 's/^PRETTY_NAME=//p' /etc/os-release 2>/dev/null | tr -d '"'))"
  # The container tests also talk to images as curl does (tests/reliability/test_image.py).
  step "tools: apt packages" apt_install curl
  case $ENGINE_SETUP in
    podman) step engine step_engine ;;
    docker) step engine step_docker_engine ;;
    *) fail "TRAIN_TO_SERVE_ENGINE_SETUP=$ENGINE_SETUP is not an engine this script sets up" \
         "a typo" "use docker, or leave it unset (podman)" ;;
  esac
  step "base (total)" step_base
  step "base: check" check_base
  log "timings:"
  printf '    %s\n' "${TIMINGS[@]}" >&2
  log "ready: engine $(engine_version); base image $BASE ($BASE_WHY)"
  log "the project detects its own (a docker that builds, else podman); to pin these: TRAIN_TO_SERVE_CONTAINER_ENGINE=$ENGINE TRAIN_TO_SERVE_BASE_IMAGE=$BASE"
  printf 'export TRAIN_TO_SERVE_CONTAINER_ENGINE=%s\nexport TRAIN_TO_SERVE_BASE_IMAGE=%s\n' "$ENGINE" "$BASE"
}
main "$@"
