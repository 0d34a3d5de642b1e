# friendlyhello: the Get Started tutorial's app, on the Python standard library alone.
#
#   docker build -t friendlyhello .                     the tiny image: FROM scratch, the default
#   docker build --target slim -t friendlyhello:slim .  the tutorial's shape: python slim, a shell

# -- slim: the official Python image and our code (two modules and a package) ---------------------------------------
FROM python:3.12-slim AS slim

WORKDIR /app
COPY hello_server.py resp_client.py ./
COPY friendlyhello/*.py ./friendlyhello/

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

# -- collect: exactly what the server runs on, taken out of the same image ---------------------
# No network and no pip: the script runs the server along each of its paths and copies what
# that imported and loaded (interpreter, libraries, standard library compiled, CA bundle).
FROM python:3.12-slim AS collect

COPY hello_server.py resp_client.py /src/
COPY friendlyhello/*.py /src/friendlyhello/
COPY scripts/collect_runtime.py /collect_runtime.py
RUN ["python3", "/collect_runtime.py", "--app", "/src", "--out", "/runtime"]

# -- the tiny image: that, and nothing else (no shell, no pip, no package manager) -------------
FROM scratch

COPY --from=collect /runtime /
WORKDIR /app

ENV NAME=World \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

EXPOSE 80
USER 10001:10001

HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/python3", "-S", "-m", "hello_server", "--healthcheck"]

# -S: no site-packages to look through. Arguments go to the server: docker run friendlyhello --help
ENTRYPOINT ["/usr/local/bin/python3", "-S", "-m", "hello_server"]
