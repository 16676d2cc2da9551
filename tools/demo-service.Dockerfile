# The bundled demo service as an image, for machines with Docker (a base to try the wrapper on).
# Build from the repository root:
#   docker build -f tools/demo-service.Dockerfile -t chutes-wrappers-demo:latest .
#   docker run --rm -p 127.0.0.1:8020:8020 chutes-wrappers-demo:latest
FROM python:3.11-slim
RUN pip install --no-cache-dir fastapi uvicorn python-multipart
COPY tools/demo_service.py /srv/demo/demo_service.py
EXPOSE 8020
CMD ["python3", "/srv/demo/demo_service.py", "--host", "0.0.0.0", "--port", "8020"]
