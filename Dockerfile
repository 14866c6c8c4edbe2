# Conventional build of the model-service image, for machines with a registry:
#   docker build -t lazy-proxy/model-service:latest .
# (Without a registry, `python -m backends.image build --runtime docker|podman` makes the equivalent
# image from the host's Debian python and the venv's wheels.)
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN pip install "aiohttp>=3.9" "onnxruntime>=1.17" "numpy>=1.26" "structlog>=24" "prometheus-client>=0.20" "PyYAML>=6" \
                "grpcio>=1.85.4" "grpcio-health-checking>=1.85" "protobuf>=7.35.1" \
 && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin app

WORKDIR /app
COPY model_service/ /app/model_service/
RUN python -m compileall -q /app/model_service

USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/v2/health/ready', timeout=2)"
STOPSIGNAL SIGINT
CMD ["python", "-m", "model_service", "--host", "0.0.0.0", "--port", "8080"]
