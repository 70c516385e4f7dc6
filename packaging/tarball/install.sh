#!/bin/sh
# Install (or remove) custodyd from this tarball on a host without dpkg.
#   ./install.sh                 install to PREFIX (default /usr/local)
#   ./install.sh --uninstall     detach and remove (keeps /etc/custody and /var/lib/custody)
#   ./install.sh --purge         the same, and remove the config and the state
# Environment: PREFIX, CUSTODY_FORCE_REMOVE=1 (remove even with enforcement in force).
# The same semantics as the Debian package: the config is never overwritten (a newer
# default is written next to it as custodyd.toml.new), the state directory is kept.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
PREFIX=${PREFIX:-/usr/local}
bindir=$PREFIX/bin
unitdir=/etc/systemd/system
systemd_running() { [ -d /run/systemd/system ]; }

if [ "$(id -u)" -ne 0 ]; then
    echo "install.sh: run as root" >&2
    exit 1
fi

case "${1:-}" in
--uninstall|--purge)
    if systemd_running; then
        systemctl stop custodyd.service 2>/dev/null || true
        systemctl disable custodyd.service 2>/dev/null || true
    fi
    force=
    [ "${CUSTODY_FORCE_REMOVE:-}" = 1 ] && force=--force
    config=
    [ -f /etc/custody/custodyd.toml ] && config="--config /etc/custody/custodyd.toml"
    if [ -x "$bindir/custodyd" ]; then
        rc=0
        # shellcheck disable=SC2086
        "$bindir/custodyd" detach $force $config || rc=$?
        if [ "$rc" -ne 0 ]; then
            echo "install.sh: not removed (custodyd detach exited $rc, see above); CUSTODY_FORCE_REMOVE=1 overrides" >&2
            exit 1
        fi
    fi
    rm -f "$bindir/custodyd" "$unitdir/custodyd.service"
    if systemd_running; then systemctl daemon-reload; fi
    if [ "$1" = --purge ]; then
        rm -rf /var/lib/custody /run/custody
        rm -f /etc/custody/custodyd.toml /etc/custody/custodyd.toml.new
        rmdir /etc/custody 2>/dev/null || true
    fi
    echo "custodyd removed"
    exit 0
    ;;
"") ;;
*)
    echo "usage: $0 [--uninstall|--purge]" >&2
    exit 2
    ;;
esac

install -d -m 0755 "$bindir" /etc/custody
install -m 0755 "$here/bin/custodyd" "$bindir/custodyd"
if [ -f /etc/custody/custodyd.toml ]; then
    if ! cmp -s "$here/etc/custody/custodyd.toml" /etc/custody/custodyd.toml; then
        install -m 0644 "$here/etc/custody/custodyd.toml" /etc/custody/custodyd.toml.new
        echo "kept /etc/custody/custodyd.toml; the new default is /etc/custody/custodyd.toml.new"
    fi
else
    install -m 0644 "$here/etc/custody/custodyd.toml" /etc/custody/custodyd.toml
fi
install -d -m 0700 /var/lib/custody
chmod 0700 /var/lib/custody
install -d -m 0755 "$unitdir"
sed "s|/usr/bin/custodyd|$bindir/custodyd|g" "$here/systemd/custodyd.service" >"$unitdir/custodyd.service"
chmod 0644 "$unitdir/custodyd.service"
if systemd_running; then
    systemctl daemon-reload
    systemctl try-restart custodyd.service || true
fi
"$bindir/custodyd" check-kernel || true
echo "custodyd installed in $bindir. Next:"
echo "  custodyd enroll --collector ADDR --token TOKEN --config /etc/custody/custodyd.toml"
echo "  systemctl enable --now custodyd    (without systemd: custodyd --config /etc/custody/custodyd.toml)"
