#!/bin/sh
# The image's entrypoint: make the data dir writable for the broker's own user, then run the
# broker as that user (never as root).
#
# Why: Railway (and many other platforms) mount volumes owned by root. The broker runs as the
# unprivileged uid 10001, so on a fresh volume it could not create its database. When the
# container starts as root (the default), this script hands the data dir to 10001 and drops
# privileges with `setpriv` (util-linux, part of debian slim: no gosu/su-exec to install);
# `exec` keeps the broker as PID 1 so it receives SIGTERM directly. Started as any other user
# (`docker run --user 10001`, Kubernetes `runAsUser`), it changes nothing and runs the broker.
#
# Overridable for tests (tests/it/deploy.rs runs this script against a temp dir and a stub):
#   SWITCHBOARD_DATA_DIR  the data dir (default /data; the broker reads the same variable)
#   ENTRYPOINT_BIN        the program to run (default /usr/local/bin/switchboard)
#   ENTRYPOINT_UID/GID    the user to run it as (default 10001:10001)
# (Not SWITCHBOARD_* names: the broker warns about SWITCHBOARD_* variables it does not know.)
set -eu

data_dir="${SWITCHBOARD_DATA_DIR:-/data}"
bin="${ENTRYPOINT_BIN:-/usr/local/bin/switchboard}"
uid="${ENTRYPOINT_UID:-10001}"
gid="${ENTRYPOINT_GID:-10001}"

if [ "$(id -u)" = "0" ]; then
    mkdir -p "$data_dir"
    # Recursive: a volume written by an older image that ran as root holds root-owned files.
    chown -R "$uid:$gid" "$data_dir"
    # The data dir holds the admin key and the backends' API keys (SPEC §8: 0700).
    chmod 0700 "$data_dir"
    exec setpriv --reuid="$uid" --regid="$gid" --clear-groups -- "$bin" "$@"
fi
exec "$bin" "$@"
