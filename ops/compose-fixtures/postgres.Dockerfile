# Test fixture, built by ops/compose-fixtures.sh and tagged with the name docker-compose.yml uses for PostgreSQL,
# only inside the engine ops/test-compose.sh runs against (no image registry is reachable there). Debian bookworm's
# PostgreSQL (15) behind an entrypoint that honours the official image's variables, data directory and user.
ARG FIXTURE_ROOT
FROM ${FIXTURE_ROOT}
ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PGDATA=/var/lib/postgresql/data \
    LANG=C.UTF-8
RUN set -eux; \
    mkdir -p "$PGDATA" /var/run/postgresql; \
    chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql; \
    chmod 700 "$PGDATA"; chmod 2777 /var/run/postgresql
COPY postgres-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
VOLUME /var/lib/postgresql/data
ENTRYPOINT ["docker-entrypoint.sh"]
STOPSIGNAL SIGINT
EXPOSE 5432
CMD ["postgres"]
