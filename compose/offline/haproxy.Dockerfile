# The offline run's stand-in for the haproxy image: Debian's HAProxy package, the official image's
# configuration path and user.
ARG BASE_IMAGE=localhost/aggios-debian:bookworm
FROM ${BASE_IMAGE}
RUN apt-get update && apt-get install -y --no-install-recommends haproxy \
    && rm -rf /var/lib/apt/lists/* && mkdir -p /usr/local/etc/haproxy
USER haproxy
CMD ["haproxy", "-W", "-db", "-f", "/usr/local/etc/haproxy/haproxy.cfg"]
