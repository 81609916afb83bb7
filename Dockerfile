# sam: the web server by default; the same image runs the Celery worker and beat
# (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SAM_DATA_DIR=/data \
    SAM_STATIC_ROOT=/app/static

RUN useradd --system --create-home --home-dir /home/sam --uid 1000 sam \
    && mkdir -p /app /data \
    && chown sam:sam /data

WORKDIR /app
# Only what the package needs (no .venv, no ./var with a local secret key).
COPY pyproject.toml README.md manage.py ./
COPY sam ./sam
COPY orgs ./orgs
COPY subscriptions ./subscriptions
COPY hypervisors ./hypervisors
RUN pip install . \
    && SAM_SECRET_KEY=build-only-throwaway-key-not-used-at-run-time \
       SAM_DATA_DIR=/tmp/build-data \
       python manage.py collectstatic --noinput \
    && rm -rf /tmp/build-data

USER sam
VOLUME ["/data"]
EXPOSE 8443
# HTTPS (gunicorn); a self-signed certificate is created once in /data/tls unless
# SAM_TLS_CERT / SAM_TLS_KEY name one.
CMD ["sh", "-c", "python manage.py migrate --noinput && exec python manage.py serve --bind 0.0.0.0:8443"]
