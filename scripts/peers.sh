# shellcheck shell=bash
# Installs and starts the real peers the tests talk to. Sourced by scripts/test.
# Every function either leaves its peer ready or exits non-zero saying why.

log() { printf '[peers] %s\n' "$*" >&2; }
die() { printf '[peers] FATAL: %s\n' "$*" >&2; exit 1; }

APT_UPDATED=0
apt_install() {
  # apt_install PACKAGE... (only when some are missing)
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null || die "apt-get not found; install ${missing[*]} by hand"
  if [ "$APT_UPDATED" = 0 ]; then
    log "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null || die "apt-get update failed"
    APT_UPDATED=1
  fi
  log "installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || die "apt-get install ${missing[*]} failed"
}

pg_answers() { # pg_answers HOST PORT
  pg_isready -q -h "$1" -p "$2" >/dev/null 2>&1
}

wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
  local secs=$1 what=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@"; do
    [ $SECONDS -ge $deadline ] && return 1
    sleep 0.2
  done
  log "$what is up"
}

# PostgreSQL: the server on 127.0.0.1:5432 when one answers; else the Debian cluster; else a
# throwaway cluster in a temp dir. Exports DATABASE_URL (a database the tests may create
# databases from).
ensure_postgres() {
  apt_install postgresql postgresql-client
  local host=127.0.0.1 port=5432
  if ! pg_answers $host $port; then
    local ver
    ver=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n1 || true)
    if [ -n "$ver" ] && command -v pg_ctlcluster >/dev/null; then
      log "starting PostgreSQL cluster $ver/main"
      if pg_ctlcluster --skip-systemctl-redirect "$ver" main start >/dev/null 2>&1; then
        wait_for 60 "PostgreSQL $ver/main" pg_answers $host $port || true
      fi
    fi
  fi
  if ! pg_answers $host $port; then
    port=54329
    local bindir dir
    bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)
    [ -n "$bindir" ] || die "no PostgreSQL binaries found"
    dir=$(mktemp -d /tmp/mxguard-pg.XXXXXX)
    chown postgres "$dir"
    log "starting a throwaway PostgreSQL in $dir on port $port"
    su postgres -c "$bindir/initdb -D $dir/data -A trust -U postgres" >/dev/null \
      || die "initdb failed"
    su postgres -c "$bindir/pg_ctl -D $dir/data -o '-p $port -k $dir -c listen_addresses=127.0.0.1' -l $dir/log start" >/dev/null \
      || die "pg_ctl start failed; see $dir/log"
    wait_for 60 "throwaway PostgreSQL" pg_answers $host $port || die "PostgreSQL did not start; see $dir/log"
  fi
  local admin="postgres://postgres@$host:$port/postgres"
  psql "$admin" -qtAc 'SELECT 1' >/dev/null 2>&1 \
    || die "PostgreSQL on $host:$port does not accept user postgres without a password (trust auth expected)"
  psql "$admin" -qtAc "SELECT 1 FROM pg_database WHERE datname = 'mxguard_test'" | grep -q 1 \
    || psql "$admin" -qc 'CREATE DATABASE mxguard_test' >/dev/null
  export DATABASE_URL="postgres://postgres@$host:$port/mxguard_test"
  log "DATABASE_URL=$DATABASE_URL"
}

# BIND 9 (named, nsupdate, dig), Unbound, Postfix, swaks, openssl: the tests start their own
# instances on loopback ports (see testpeers/README.md); here they only need to be installed.
# libfaketime: tests/lease_clock.rs runs an instance with its wall clock a minute off.
ensure_dns_and_mail_peers() {
  if ! dpkg -s postfix >/dev/null 2>&1; then
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    echo "postfix postfix/mailname string mxguard.test" | debconf-set-selections
  fi
  apt_install bind9 bind9-utils bind9-dnsutils unbound postfix swaks openssl libfaketime
  export PATH="$PATH:/usr/sbin"
  for b in named unbound postfix; do
    command -v "$b" >/dev/null || die "$b not found after installing its package"
  done
}

# moto's Route53 server (PyPI): the Route53 tests start their own `moto_server` on a free port.
ensure_moto() {
  if ! command -v moto_server >/dev/null; then
    command -v python3 >/dev/null || apt_install python3 python3-pip
    log "installing moto[server] from PyPI"
    python3 -m pip install --quiet 'moto[server]' >/dev/null 2>&1 \
      || python3 -m pip install --quiet --break-system-packages 'moto[server]' >/dev/null \
      || die "pip install 'moto[server]' failed"
    hash -r
  fi
  command -v moto_server >/dev/null || die "moto_server not on PATH after installing moto[server]"
}

# The packaging checks (tests/packaging.rs): `systemd-analyze verify` and `security --offline`
# on contrib/systemd/mxguard.service (Debian's systemd package; no running systemd needed), and
# `man`, which verify runs for the unit's Documentation=man:mxguard(1).
ensure_packaging_tools() {
  apt_install systemd man-db
  for b in systemd-analyze man; do
    command -v "$b" >/dev/null || die "$b not found after installing its package"
  done
}

# The dashboard's browser test (tests/dashboard.rs): Debian's Chromium, driven headless over
# WebDriver by chromedriver.
ensure_browser() {
  apt_install chromium chromium-driver
  for b in chromium chromedriver; do
    command -v "$b" >/dev/null || die "$b not found after installing its package"
  done
}
