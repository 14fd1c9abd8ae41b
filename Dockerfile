# corral as a container's PID 1: the launcher reaps every orphan, and `docker stop`
# (SIGTERM) stops the services in reverse dependency order within their stop timeouts,
# then corral exits 0.
#
#   docker build -t corral:0.1.0 .
#   docker run -d --name corral -v corral:/var/lib/corral corral:0.1.0
#   docker exec corral corral svc status
#
# One volume, /var/lib/corral, holds everything:
#   target.yaml   the target: you put it there; re-applied whenever it changes
#   state/        corral's state directory (desired state, logs, secret store, TLS)
#   secrets/      optional, one file per secret: add `--secrets-dir /var/lib/corral/secrets`
# Extra arguments are appended to the entrypoint, e.g. `--listen-http 0.0.0.0:9631`.
# For your own programs, build FROM this image and COPY them in.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CORRAL_HOME=/var/lib/corral/state

COPY . /usr/src/corral
RUN pip install /usr/src/corral && rm -rf /usr/src/corral

VOLUME /var/lib/corral
WORKDIR /var/lib/corral
EXPOSE 9631
STOPSIGNAL SIGTERM
ENTRYPOINT ["corral", "sup", "run", "--state-dir", "/var/lib/corral/state", "--target", "/var/lib/corral/target.yaml", "--watch-target"]
