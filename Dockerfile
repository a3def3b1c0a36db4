# wyoming-tts: slim image, non-root, bundled voice inside, extra voices in /data.
# Wyoming on 10200; the HTTP door (probes, metrics, /api/tts, OpenAI's speech API, a page)
# on 10201. Set WYOMING_TTS_HTTP_TOKEN to require a bearer token for speech.
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

# By number, so Kubernetes' runAsNonRoot can tell it is not root.
USER 10200
VOLUME ["/data"]
EXPOSE 10200 10201

# Voices dropped into /data are served next to the bundled en_US-joe-medium;
# split voice graphs are cached in /data/cache so restarts skip the split.
ENV WYOMING_TTS_DATA_DIRS=/data \
    WYOMING_TTS_CACHE_DIR=/data/cache \
    WYOMING_TTS_HTTP=0.0.0.0:10201

# A Describe round trip over Wyoming, then the HTTP door's liveness and readiness
# (skipped if WYOMING_TTS_HTTP is emptied to turn the door off).
# Shell form on purpose: `&&` and $WYOMING_TTS_HTTP need a shell. hadolint's DL3025
# (exec form, so signals reach the process) is about CMD and ENTRYPOINT; a health
# probe gets no signals.
# hadolint ignore=DL3025
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD python -m wyoming_tts.health_check --uri tcp://127.0.0.1:10200 \
        && { [ -z "$WYOMING_TTS_HTTP" ] || python -c "import os, urllib.request as u; \
port = os.environ['WYOMING_TTS_HTTP'].rpartition(':')[2]; \
[u.urlopen(f'http://127.0.0.1:{port}{p}', timeout=5) for p in ('/health', '/ready')]"; }

ENTRYPOINT ["python", "-m", "wyoming_tts", "--uri", "tcp://0.0.0.0:10200"]
