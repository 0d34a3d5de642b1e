"""A real image registry for tests: Debian's docker-registry (the Distribution project's
registry, what the `registry:2` image runs) on a free loopback port, with a password as a
registry on the internet has (htpasswd, bcrypt), started and stopped by its pid.

Docker and podman treat 127.0.0.0/8 as an insecure registry, so plain HTTP on loopback needs
no TLS and no daemon setting. `Docker` is the docker command line with a DOCKER_CONFIG of
the test's own: `docker login --password-stdin` there never touches the user's ~/.docker.
"""

import base64
import json
import os
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request
import uuid

from helpers import free_port, terminate, unavailable, wait_until

# What a registry answers a manifest request with depends on what the client accepts.
MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"

CONFIG = """version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: {folder}/data
  delete:
    enabled: true
http:
  addr: {address}
  secret: {secret}
auth:
  htpasswd:
    realm: friendlyhello-test
    path: {folder}/htpasswd
"""


def require(binary, package):
    path = shutil.which(binary)
    if path is None:
        unavailable(f"{binary} is not installed (apt-get install {package})")
    return path


class Registry:
    USER = "learner"

    def __init__(self):
        self.binary = require("docker-registry", "docker-registry")
        self.password = "pw-" + uuid.uuid4().hex  # a new one each run: a test can look for it
        self.address = f"127.0.0.1:{free_port()}"
        self.folder = tempfile.mkdtemp(prefix="friendlyhello-registry-")
        self.process = None

    def __enter__(self):
        htpasswd = subprocess.run([require("htpasswd", "apache2-utils"), "-Bbn", self.USER, self.password],
                                  capture_output=True, text=True, check=True).stdout
        with open(os.path.join(self.folder, "htpasswd"), "w") as out:
            out.write(htpasswd)
        config = os.path.join(self.folder, "config.yml")
        with open(config, "w") as out:
            out.write(CONFIG.format(folder=self.folder, address=self.address, secret=uuid.uuid4().hex))
        self.log = open(os.path.join(self.folder, "registry.log"), "w")
        self.process = subprocess.Popen([self.binary, "serve", config], stdout=self.log, stderr=subprocess.STDOUT)
        wait_until(self._answers, 10, f"the registry on {self.address}", pace=0.05)
        return self

    def __exit__(self, *exc_info):
        if self.process is not None:
            terminate(self.process)
        self.log.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    def _answers(self):
        if self.process.poll() is not None:
            with open(self.log.name) as log:
                raise AssertionError(f"the registry exited: {log.read()}")
        try:
            urllib.request.urlopen(f"http://{self.address}/v2/", timeout=1)
        except urllib.error.HTTPError as error:
            return error.code == 401  # up, and asking for the password
        except OSError:
            return False
        return False

    def get(self, path, accept="*/*"):
        """GET from the registry's API as the user; the body as JSON."""
        credentials = base64.b64encode(f"{self.USER}:{self.password}".encode()).decode()
        request = urllib.request.Request(f"http://{self.address}/v2/{path}",
                                         headers={"Authorization": f"Basic {credentials}", "Accept": accept})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)

    def platforms(self, repository, tag):
        """What the tag names, read from the registry: its media type, and for each platform in
        its list that platform's image configuration (where HEALTHCHECK lives)."""
        listed = self.get(f"{repository}/manifests/{tag}", f"{MANIFEST_LIST}, {OCI_INDEX}")
        configs = {}
        for entry in listed.get("manifests", []):
            one = self.get(f"{repository}/manifests/{entry['digest']}", f"{MANIFEST}, {OCI_MANIFEST}")
            platform = f"{entry['platform']['os']}/{entry['platform']['architecture']}"
            configs[platform] = self.get(f"{repository}/blobs/{one['config']['digest']}")
        return listed["mediaType"], configs

    def tags(self, repository):
        return self.get(f"{repository}/tags/list")["tags"]


class Docker:
    """The docker command line with a config folder (logins) of its own."""

    def __init__(self, config, **env):
        self.config = config
        self.env = {**os.environ, "DOCKER_CONFIG": config, **env}

    def __call__(self, *args, check=True, timeout=180, stdin=None):
        result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout,
                                input=stdin, env=self.env)
        if check and result.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result

    def out(self, *args, **options):
        return self(*args, **options).stdout.strip()

    def login(self, registry, password=None):
        return self("login", "--username", registry.USER, "--password-stdin", registry.address,
                    stdin=(registry.password if password is None else password) + "\n", check=False)

    def logins(self):
        """What the config file holds for each registry: {address: entry}."""
        try:
            with open(os.path.join(self.config, "config.json")) as file:
                return json.load(file).get("auths", {})
        except FileNotFoundError:
            return {}

    def files_holding(self, secret):
        found = []
        for folder, _, names in os.walk(self.config):
            for name in names:
                with open(os.path.join(folder, name), "rb") as file:
                    if secret.encode() in file.read():
                        found.append(name)
        return found
