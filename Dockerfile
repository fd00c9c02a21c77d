# The Flowscope image: the `flowscope` command with the collector, the demo services and the
# dashboard. docker-compose.yml runs each of them from it; the native launcher needs no image.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY . .
# python-qpid-proton (AMQP 1.0, for ActiveMQ Artemis) is published as source only: its C core
# is compiled at install, and the compiler removed after.
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && pip install --no-cache-dir . \
    && apt-get purge -y --auto-remove gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --user-group --uid 10001 flowscope \
    && mkdir /data \
    && chown flowscope:flowscope /data

# Run state and the store; docker-compose.yml mounts one named volume here in the collector and
# the dashboard, so the dashboard reads the collector's store.
ENV FLOWSCOPE_HOME=/data
USER flowscope
WORKDIR /data

CMD ["flowscope", "--help"]
