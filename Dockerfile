# wyoming-tts: slim image, non-root, bundled voice inside, extra voices in /data.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY wyoming_tts ./wyoming_tts
COPY config ./config
RUN pip install . \
    && useradd --system --uid 10200 --home-dir /data --shell /usr/sbin/nologin wyoming \
    && mkdir -p /data/cache \
    && chown -R wyoming /data

USER wyoming
VOLUME ["/data"]
EXPOSE 10200

# Voices dropped into /data are served next to the bundled en_US-joe-medium;
# split voice graphs are cached in /data/cache so restarts skip the split.
ENV WYOMING_TTS_DATA_DIRS=/data \
    WYOMING_TTS_CACHE_DIR=/data/cache

HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["python", "-m", "wyoming_tts.health_check", "--uri", "tcp://127.0.0.1:10200"]

ENTRYPOINT ["python", "-m", "wyoming_tts", "--uri", "tcp://0.0.0.0:10200"]
