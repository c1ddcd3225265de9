# gatewayd in a container: slim Python, non-root, state in a volume, health from /healthz.

# py-tlsh (fuzzy hashing for the spam stage) compiles from source, and gatewayd compiles its
# pipeline's modules with mypyc (setup.py): build wheels with a compiler, then install them into a
# clean image without one.
FROM python:3.11-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends g++ && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY gatewayd ./gatewayd
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
COPY --from=build /wheels /wheels
RUN pip install --no-index --find-links /wheels gatewayd && rm -rf /wheels \
 && groupadd --system --gid 10001 gatewayd \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/gatewayd --shell /usr/sbin/nologin gatewayd \
 && mkdir -p /var/lib/gatewayd /etc/gatewayd \
 && chown gatewayd:gatewayd /var/lib/gatewayd

# Numeric, so that a runtime can tell it is not root without the image's /etc/passwd
# (Kubernetes' runAsNonRoot refuses a user given by name).
USER 10001:10001
VOLUME ["/var/lib/gatewayd"]
EXPOSE 8025
# Mount the config at /etc/gatewayd/gatewayd.yaml with server.listen: "0.0.0.0:8025"
# and store.path: /var/lib/gatewayd/events.db.
# Straight to gatewayd: no HTTP(S)_PROXY of the environment in between (urllib would use it).
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request as u; sys.exit(u.build_opener(u.ProxyHandler({})).open('http://127.0.0.1:8025/healthz', timeout=4).status != 200)"]
STOPSIGNAL SIGTERM
# The file-descriptor limit is the runtime's: give it as the systemd unit does (docker run
# --ulimit nofile=65536:65536); server.max_connections defaults to half of it.
# SCHED_BATCH, as the systemd unit sets it: woken by new mail, gatewayd does not preempt a
# Dovecot on the same host mid-sync (docs/benchmarks.md, ninth pass). chrt (util-linux) execs
# gatewayd, so it stays PID 1; no privilege or seccomp exception is needed for this policy.
ENTRYPOINT ["chrt", "--batch", "0", "gatewayd"]
CMD ["run", "-c", "/etc/gatewayd/gatewayd.yaml"]
