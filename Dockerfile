# friendlyhello: the Get Started tutorial's app, on the Python standard library alone.
FROM python:3.12-slim

WORKDIR /app
COPY hello_server.py resp_client.py ./

ENV NAME=World \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

# Port 80 as a non-root user: Docker 20.10+ allows it in a container's own network namespace;
# under podman pass --sysctl net.ipv4.ip_unprivileged_port_start=0, or set PORT=8080.
EXPOSE 80
USER 10001:10001

# No curl or wget in the image: the server checks itself.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "hello_server.py", "--healthcheck"]

CMD ["python", "hello_server.py"]
