#!/bin/bash
# Test fixture (ops/test-compose.sh): a small stand-in for the entrypoint of the official `redis` image, built on
# Debian's redis-server package. Like the official image it runs the server as the `redis` user in /data (the
# volume) and turns protected mode off (the official image is built that way: access is controlled by the container
# network). Users run the official image.
set -euo pipefail

if [ "${1:0:1}" = '-' ] || [ "${1%.conf}" != "$1" ]; then set -- redis-server "$@"; fi

if [ "$1" = redis-server ] && [ "$(id -u)" = 0 ]; then
  find . \! -user redis -exec chown redis '{}' +
  exec setpriv --reuid=redis --regid=redis --init-groups "$0" "$@"
fi

if [ "$1" = redis-server ]; then
  shift
  # A first argument that is not an option is a config file, as redis-server itself reads it.
  if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
    conf="$1"
    shift
    set -- redis-server "$conf" --protected-mode no "$@"
  else
    set -- redis-server --protected-mode no "$@"
  fi
fi

exec "$@"
