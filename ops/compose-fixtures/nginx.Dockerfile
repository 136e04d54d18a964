# Test fixture, built by ops/compose-fixtures.sh and tagged with the name docker-compose.prod.yml uses for nginx,
# only inside the engine ops/test-compose.sh runs against. Debian bookworm's nginx-light (1.22) and wget (the
# proxy's health check), logs to the container's stdout/stderr like the official image.
ARG FIXTURE_ROOT
FROM ${FIXTURE_ROOT}
RUN set -eux; \
    mkdir -p /var/log/nginx /var/cache/nginx; \
    ln -sf /dev/stdout /var/log/nginx/access.log; \
    ln -sf /dev/stderr /var/log/nginx/error.log
EXPOSE 80
STOPSIGNAL SIGQUIT
CMD ["nginx", "-g", "daemon off;"]
