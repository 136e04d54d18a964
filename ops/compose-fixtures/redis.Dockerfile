# Test fixture, built by ops/compose-fixtures.sh and tagged with the name docker-compose.yml uses for Redis, only
# inside the engine ops/test-compose.sh runs against. Debian bookworm's redis-server (7.0) behind an entrypoint that
# behaves like the official image's (user redis, /data, protected mode off).
ARG FIXTURE_ROOT
FROM ${FIXTURE_ROOT}
RUN set -eux; mkdir -p /data; chown redis:redis /data
COPY redis-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
VOLUME /data
WORKDIR /data
ENTRYPOINT ["docker-entrypoint.sh"]
EXPOSE 6379
CMD ["redis-server"]
