#!/bin/sh
# Debian's WordPress, PHP's command-line server and its MySQL driver, for the tests that run
# against a real WordPress (tests/wordpress/). Installs only what is missing, only as root;
# otherwise it says what is missing and those tests skip with the same reason.
set -eu
missing=""
[ -f /usr/share/wordpress/wp-includes/version.php ] || missing="$missing wordpress"
command -v php >/dev/null 2>&1 || missing="$missing php-cli"
if command -v php >/dev/null 2>&1 && ! php -m 2>/dev/null | grep -qx mysqli; then
    missing="$missing php-mysql"
fi
command -v mariadb >/dev/null 2>&1 || command -v mysql >/dev/null 2>&1 || missing="$missing mariadb-client"
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "real-WordPress tests will skip: missing Debian packages:$missing (run 'make test' as root, or: sudo apt-get install$missing)" >&2
    exit 0
fi
# apache2 comes with the wordpress package; it must not be started (there is no use for it here).
guard=""
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    guard=1
fi
status=0
if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing >/dev/null 2>&1; then
    apt-get update -q >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing >/dev/null || status=$?
fi
[ -n "$guard" ] && rm -f /usr/sbin/policy-rc.d
if [ "$status" != 0 ]; then
    echo "real-WordPress tests will skip: could not install$missing (apt-get exit $status)" >&2
fi
exit 0
