# The gateway's production image: `gunicorn -c gunicorn.conf.py wsgi:app` as a non-root user.
# The same image runs the job worker with `flask --app wsgi jobs worker` (render.yaml).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    FLASK_ENV=production \
    PORT=10000

WORKDIR /app

# A fixed, unprivileged user with no home and no shell; the code stays owned by root.
RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid gateway --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin gateway

# Dependency layer: only pyproject.toml, so editing the code does not reinstall the dependencies.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The code: gunicorn and `flask --app wsgi` import it from the working directory.
COPY wsgi.py gunicorn.conf.py ./
COPY config ./config
COPY core ./core
COPY auth ./auth
COPY gateway ./gateway
# Bytecode compiled once here: the running user cannot write it (PYTHONDONTWRITEBYTECODE),
# and workers then start without compiling every module in memory.
RUN python -m compileall -q wsgi.py gunicorn.conf.py config auth gateway

USER gateway

EXPOSE 10000

# Liveness only (/healthz touches nothing else); python's urllib, so no curl in the image.
# python3: the name every Python image and Debian host has (Debian has no bare `python`).
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD python3 -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '10000'), timeout=4)" || exit 1

# Before a new release first serves, run `flask --app wsgi redis migrate-keys` once with the
# same environment (render.yaml does it as the preDeployCommand): it renames keys of the
# untagged layout of earlier releases and does nothing when there are none.
CMD ["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
