#!/bin/sh
# Hardened entrypoint for the Merxios Redis (container Merxios_redis_prod).
#
# Reads the password from a Docker secret file and starts redis-server with
# requirepass, AOF persistence and the noeviction policy BullMQ requires.
# The configuration, password included, is fed to `redis-server -` on
# stdin: it never appears on a command line (ps, /proc/<pid>/cmdline,
# docker inspect) nor in the environment, and is never written to disk.
#
# Extra arguments ("$@" and $REDIS_EXTRA_ARGS) are appended to the
# redis-server command line and override the generated configuration.
#
# Environment (defaults are the container's):
#   REDIS_PASSWORD_FILE     secret file       (/run/secrets/redis_password)
#   REDIS_SECRET_HOST_PATH  host file named in error messages
#                                             (/etc/merxios/secrets/redis_password)
#   REDIS_DATA_DIR          AOF/RDB directory (/data)
#   REDIS_MAXMEMORY         optional maxmemory, e.g. 1gb (unset: no limit)
#   REDIS_EXTRA_ARGS        extra redis-server arguments, split on spaces
#   REDIS_SERVER_BIN        redis-server binary (redis-server)
#   REDIS_RUN_AS            user to drop to when started as root (redis);
#                           empty: run as the current user
set -eu
# No pathname expansion: REDIS_EXTRA_ARGS is split on spaces, never globbed.
set -f

secret_file="${REDIS_PASSWORD_FILE:-/run/secrets/redis_password}"
host_file="${REDIS_SECRET_HOST_PATH:-/etc/merxios/secrets/redis_password}"
data_dir="${REDIS_DATA_DIR:-/data}"
server_bin="${REDIS_SERVER_BIN:-redis-server}"
run_as="${REDIS_RUN_AS-redis}"

die() {
    printf 'redis entrypoint: %s\n' "$*" >&2
    exit 1
}

if [ -d "$secret_file" ]; then
    # Docker creates a directory in place of a bind source that is missing.
    die "secret file $secret_file is a directory, not a file; create the file on the host at $host_file and recreate the container"
elif [ ! -e "$secret_file" ]; then
    die "secret file $secret_file is missing; create it on the host at $host_file"
elif [ ! -r "$secret_file" ]; then
    die "secret file $secret_file is not readable by uid $(id -u); check the permissions of $host_file on the host"
fi

# Command substitution drops trailing newlines, as `$(cat file)` does in the
# runbook's `redis-cli -a $(sudo cat ...)`, so both see the same password.
password="$(cat -- "$secret_file")" || die "cannot read secret file $secret_file"

case "$password" in
    '')
        die "secret file $secret_file is empty; write the password into $host_file on the host"
        ;;
    *[[:cntrl:]]*)
        die "secret file $secret_file holds a control character (a Windows line ending or a second line?); write the password as one line into $host_file"
        ;;
    [[:space:]]* | *[[:space:]])
        die "secret file $secret_file has leading or trailing blanks; clients that trim them would fail to authenticate; fix $host_file"
        ;;
esac

# Redis config strings are double-quoted with backslash escapes. sed reads
# the file itself so the password is never an argument of any process.
quoted_password="$(sed -e 's/[\\"]/\\&/g' -- "$secret_file")"
quoted_dir="$(printf '%s' "$data_dir" | sed -e 's/[\\"]/\\&/g')"

maxmemory_line=''
if [ -n "${REDIS_MAXMEMORY:-}" ]; then
    case "$REDIS_MAXMEMORY" in
        *[!0-9A-Za-z]*) die "REDIS_MAXMEMORY is not a size such as 512mb or 2gb (digits and a unit only)" ;;
    esac
    maxmemory_line="maxmemory ${REDIS_MAXMEMORY}"
fi

[ -d "$data_dir" ] || die "data directory $data_dir does not exist"
cd "$data_dir"

# Files Redis creates (AOF, RDB) readable by their owner only.
umask 0077

# shellcheck disable=SC2086 # REDIS_EXTRA_ARGS is split on purpose.
set -- "$server_bin" - ${REDIS_EXTRA_ARGS:-} "$@"

# Started as root (the container's default): own the data directory as the
# service user, then drop root before exec'ing redis-server.
if [ "$(id -u)" = 0 ] && [ -n "$run_as" ]; then
    run_gid="$(id -g -- "$run_as" 2>/dev/null)" || die "REDIS_RUN_AS=$run_as: no such user"
    find . \! -user "$run_as" -exec chown "$run_as" '{}' +
    if command -v setpriv >/dev/null 2>&1; then
        set -- setpriv "--reuid=$run_as" "--regid=$run_gid" --init-groups -- "$@"
    elif command -v gosu >/dev/null 2>&1; then
        set -- gosu "$run_as" "$@"
    elif command -v su-exec >/dev/null 2>&1; then
        set -- su-exec "$run_as" "$@"
    else
        die "running as root but none of setpriv, gosu, su-exec is available to drop to user $run_as"
    fi
fi

exec "$@" <<EOF
requirepass "${quoted_password}"
protected-mode yes
dir "${quoted_dir}"
appendonly yes
appendfsync everysec
maxmemory-policy noeviction
${maxmemory_line}
EOF
