"""The Kubernetes manifests in k8s/: valid against the API's own schemas, restricted by the Pod
Security Standards, and in agreement with the server they run. No cluster runs here: the
server is started with the environment a pod would have, on the port the Deployment declares."""

import json
import os
import re
import socket
import subprocess
import threading

import kubernetes_validate
import pytest
import yaml

import friendlyhello
from friendlyhello import settings
from helpers import ROOT, Process, free_port, request

K8S = os.path.join(ROOT, "k8s")
KUBERNETES_VERSION = "1.35"  # a recent release whose schemas kubernetes-validate bundles
LABELS = ("app.kubernetes.io/name", "app.kubernetes.io/component", "app.kubernetes.io/part-of",
          "app.kubernetes.io/version")


OVERLAYS = ("tls", "sentinel")  # `kubectl apply -k k8s/NAME/`: the base, patched and added to


def load(name):
    with open(os.path.join(K8S, name)) as text:
        return list(yaml.safe_load_all(text))


def overlay_patches():
    """The overlays' patch files (parts of manifests, not whole ones)."""
    return {os.path.join(overlay, patch["path"]) for overlay in OVERLAYS
            for patch in load(os.path.join(overlay, "kustomization.yaml"))[0]["patches"]}


def manifest_files():
    """Every whole manifest: the base's, the overlays' own and the optional ones."""
    found = []
    for folder, _, files in os.walk(K8S):
        found += [os.path.relpath(os.path.join(folder, f), K8S) for f in files if f.endswith(".yaml")]
    return sorted(f for f in found if not f.endswith("kustomization.yaml") and f not in overlay_patches())


def kustomization():
    (document,) = load("kustomization.yaml")
    return document


def resources():
    """Every resource `kubectl apply -k k8s/` creates."""
    return [doc for name in kustomization()["resources"] for doc in load(name)]


def one(kind, name):
    (found,) = [r for r in resources() if r["kind"] == kind and r["metadata"]["name"] == name]
    return found


def web_container():
    (container,) = one("Deployment", "friendlyhello")["spec"]["template"]["spec"]["containers"]
    return container


# -- the schemas and the kustomization ----------------------------------------------------------

# cert-manager's Certificate and Issuer (v1), which the API's own schemas do not hold: their
# fields as cert-manager's API reference gives them, those this project uses and their neighbours.
CERT_MANAGER_FIELDS = {
    "Certificate": {"secretName", "issuerRef", "dnsNames", "ipAddresses", "uriSANs", "emailAddresses",
                    "commonName", "duration", "renewBefore", "privateKey", "usages", "isCA", "subject",
                    "secretTemplate", "keystores", "revisionHistoryLimit", "encodeUsagesInRequest"},
    "Issuer": {"selfSigned", "ca", "acme", "vault", "venafi"},
}
PRIVATE_KEY_FIELDS = {"algorithm", "size", "rotationPolicy", "encoding"}


def validate(document):
    if document["apiVersion"] != "cert-manager.io/v1":
        return kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
    assert set(document) == {"apiVersion", "kind", "metadata", "spec"}
    spec = document["spec"]
    assert set(spec) <= CERT_MANAGER_FIELDS[document["kind"]], document["kind"]
    if document["kind"] == "Certificate":
        assert {"secretName", "issuerRef"} <= set(spec) and set(spec["issuerRef"]) <= {"name", "kind", "group"}
        assert set(spec["privateKey"]) <= PRIVATE_KEY_FIELDS and spec["privateKey"]["algorithm"] in (
            "RSA", "ECDSA", "Ed25519")
        assert all(re.fullmatch(r"\d+h", spec[field]) for field in ("duration", "renewBefore"))
    return None


@pytest.mark.parametrize("name", manifest_files())
def test_every_manifest_validates_strictly_against_the_kubernetes_api(name):
    for document in load(name):
        validate(document)


def merged(base, patch):
    """A strategic merge patch, as kustomize applies one, for what the overlays' patches hold:
    maps merged, lists of named items merged by name (``$patch: delete`` removes one), other
    values replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        return {**base, **{key: merged(base.get(key), value) for key, value in patch.items()}}
    if isinstance(base, list) and isinstance(patch, list) and all("name" in item for item in base + patch):
        by_name = {item["name"]: item for item in base}
        for item in patch:
            if item.get("$patch") == "delete":
                del by_name[item["name"]]
            else:
                by_name[item["name"]] = merged(by_name.get(item["name"]), item)
        return list(by_name.values())
    return patch


def overlay_resources(overlay):
    """What `kubectl apply -k k8s/OVERLAY/` creates: the base with the overlay's patches merged,
    and the overlay's own resources."""
    (kustomization,) = load(os.path.join(overlay, "kustomization.yaml"))
    assert kustomization["resources"][0] == ".."
    patches = [doc for patch in kustomization["patches"] for doc in load(os.path.join(overlay, patch["path"]))]
    rendered = []
    for resource in resources():
        for patch in patches:
            if (patch["kind"], patch["metadata"]["name"]) == (resource["kind"], resource["metadata"]["name"]):
                resource = merged(resource, patch)
        rendered.append(resource)
    own = [doc for name in kustomization["resources"][1:] for doc in load(os.path.join(overlay, name))]
    return rendered + own + [generated(overlay, g) for g in kustomization.get("configMapGenerator", [])]


def generated(overlay, generator):
    """The ConfigMap a configMapGenerator makes: each file by its name (its name kept as is)."""
    options = generator["options"]
    assert options["disableNameSuffixHash"] is True  # the workloads name it as written
    data = {}
    for name in generator["files"]:
        with open(os.path.join(K8S, overlay, name)) as text:
            data[name] = text.read()
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": generator["name"], "labels": options["labels"]}, "data": data}


def tls_resources():
    return overlay_resources("tls")


def test_the_tls_overlay_validates_and_its_pods_meet_the_restricted_standard():
    rendered = tls_resources()
    for document in rendered:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
    (deployment,) = [r for r in rendered if r["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    assert restricted_violations(pod) == []
    (service,) = [r for r in rendered if r["kind"] == "Service" and r["metadata"]["name"] == "friendlyhello"]
    (container,) = pod["containers"]
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"http": 8080, "https": 8443}
    assert {p["name"]: (p["port"], p["targetPort"]) for p in service["spec"]["ports"]} == {
        "http": (80, "http"), "https": (443, "https")}


def test_the_cert_manager_certificate_issues_the_secret_the_tls_overlay_mounts():
    (issuer, certificate) = load("optional/certificate.yaml")
    (deployment,) = [r for r in tls_resources() if r["kind"] == "Deployment"]
    (volume,) = [v for v in deployment["spec"]["template"]["spec"]["volumes"] if "secret" in v]
    assert certificate["spec"]["secretName"] == volume["secret"]["secretName"] == "friendlyhello-tls"
    assert certificate["spec"]["issuerRef"] == {"name": issuer["metadata"]["name"], "kind": "Issuer",
                                                "group": "cert-manager.io"}
    assert "friendlyhello" in certificate["spec"]["dnsNames"]


def test_kustomization_lists_every_manifest_but_the_optional_ones():
    listed = set(kustomization()["resources"])
    assert listed == {f for f in manifest_files() if not f.startswith(("optional/", *(o + "/" for o in OVERLAYS)))}


def test_the_optional_autoscaler_scales_the_web_deployment():
    (hpa,) = load("optional/hpa.yaml")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] == "friendlyhello"


@pytest.mark.parametrize("name", manifest_files())
def test_everything_carries_the_recommended_labels(name):
    for document in load(name):
        assert set(LABELS) <= set(document["metadata"]["labels"]), document["metadata"]["name"]
        template = document.get("spec", {}).get("template")
        if template:
            assert document["metadata"]["labels"] == template["metadata"]["labels"]
            selector = document["spec"]["selector"]["matchLabels"]
            assert selector.items() <= template["metadata"]["labels"].items()
            assert "app.kubernetes.io/version" not in selector  # a selector outlives versions


def test_services_select_the_pods_of_their_workloads():
    for service, workload in (("friendlyhello", ("Deployment", "friendlyhello")), ("redis", ("StatefulSet", "redis"))):
        selector = one("Service", service)["spec"]["selector"]
        assert selector.items() <= one(*workload)["spec"]["template"]["metadata"]["labels"].items()


# -- the restricted Pod Security Standard ----------------------------------------------------------
# Written from the Pod Security Standards' table (baseline, then restricted), not from our files:
# https://kubernetes.io/docs/concepts/security/pod-security-standards/

SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
                "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
                "net.ipv4.tcp_keepalive_probes"}
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                      "projected", "secret"}
SELINUX_TYPES = {None, "", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}


def restricted_violations(pod):
    """Every way a pod spec breaks the restricted profile (and our two extra rules)."""
    bad = []
    pod_context = pod.get("securityContext", {})
    containers = pod.get("containers", []) + pod.get("initContainers", []) + pod.get("ephemeralContainers", [])
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(field):
            bad.append(f"{field} is set")
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            bad.append(f"volume {volume['name']} is {kinds}")
    for sysctl in pod_context.get("sysctls", []):
        if sysctl["name"] not in SAFE_SYSCTLS:
            bad.append(f"sysctl {sysctl['name']}")
    for c in containers:
        ctx, name = c.get("securityContext", {}), c["name"]

        def setting(field, ctx=ctx):
            return ctx.get(field, pod_context.get(field))

        if (ctx.get("windowsOptions") or pod_context.get("windowsOptions") or {}).get("hostProcess"):
            bad.append(f"{name}: hostProcess")
        if ctx.get("privileged"):
            bad.append(f"{name}: privileged")
        if any(p.get("hostPort") for p in c.get("ports", [])):
            bad.append(f"{name}: hostPort")
        if ctx.get("procMount", "Default") != "Default":
            bad.append(f"{name}: procMount")
        selinux = setting("seLinuxOptions") or {}
        if selinux.get("type") not in SELINUX_TYPES or selinux.get("user") or selinux.get("role"):
            bad.append(f"{name}: seLinuxOptions")
        apparmor = (setting("appArmorProfile") or {}).get("type", "RuntimeDefault")
        if apparmor not in ("RuntimeDefault", "Localhost"):
            bad.append(f"{name}: appArmorProfile {apparmor}")
        if ctx.get("allowPrivilegeEscalation") is not False:
            bad.append(f"{name}: allowPrivilegeEscalation is not false")
        if setting("runAsNonRoot") is not True:
            bad.append(f"{name}: runAsNonRoot is not true")
        user = setting("runAsUser")
        if not isinstance(user, int) or user == 0:
            bad.append(f"{name}: runAsUser is not a numeric non-root user")
        if (setting("seccompProfile") or {}).get("type") not in ("RuntimeDefault", "Localhost"):
            bad.append(f"{name}: seccompProfile is not RuntimeDefault or Localhost")
        capabilities = ctx.get("capabilities", {})
        if "ALL" not in capabilities.get("drop", []):
            bad.append(f"{name}: capabilities do not drop ALL")
        if set(capabilities.get("add", [])) - {"NET_BIND_SERVICE"}:
            bad.append(f"{name}: adds capabilities")
        if ctx.get("readOnlyRootFilesystem") is not True:
            bad.append(f"{name}: root filesystem is writable")
    return bad


def test_every_pod_meets_the_restricted_pod_security_standard():
    pods = [r["spec"]["template"]["spec"] for r in resources() if r["kind"] in ("Deployment", "StatefulSet")]
    assert len(pods) == 2
    assert [restricted_violations(pod) for pod in pods] == [[], []]
    assert all(pod.get("automountServiceAccountToken") is False for pod in pods)


def test_the_restricted_check_catches_what_it_should():
    loose = {"hostNetwork": True, "volumes": [{"name": "h", "hostPath": {"path": "/"}}],
             "containers": [{"name": "c", "securityContext": {"privileged": True, "runAsUser": 0,
                                                              "capabilities": {"add": ["SYS_ADMIN"]}}}]}
    found = " ".join(restricted_violations(loose))
    for words in ("hostNetwork", "hostPath", "privileged", "allowPrivilegeEscalation", "runAsNonRoot",
                  "numeric non-root", "seccompProfile", "drop ALL", "adds capabilities", "writable"):
        assert words in found


# -- the manifests and the server agree ------------------------------------------------------------

def pod_environment(container, pod="friendlyhello-7d9c-x2x4q", namespace="demo", node="node-1", ip="10.1.2.3"):
    """The container's environment as the kubelet would give it (the Downward API resolved)."""
    downward = {"metadata.name": pod, "metadata.namespace": namespace, "spec.nodeName": node,
                "status.podIP": ip}
    return {e["name"]: e["value"] if "value" in e else downward[e["valueFrom"]["fieldRef"]["fieldPath"]]
            for e in container["env"]}


def test_every_environment_variable_the_deployment_sets_is_a_setting():
    known = {name for s in settings.SETTINGS for name in (s.env, *s.aliases)}
    assert set(pod_environment(web_container())) <= known


def test_the_pod_answers_every_probe_on_its_declared_port_and_shows_where_it_runs():
    container = web_container()
    (port,) = container["ports"]
    env = pod_environment(container)
    assert env["PORT"] == str(port["containerPort"])
    free = free_port()  # the declared port, moved to a free one on this shared machine
    proc = Process({**env, "PORT": str(free), "BIND": "127.0.0.1", "REDIS_HOST": "127.0.0.1",
                    "REDIS_PORT": str(free_port()), "REDIS_TIMEOUT": "0.5"})
    try:
        line = proc.wait_listening()
        probes = {kind: container[kind]["httpGet"] for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
        statuses = {kind: request(free, probe["path"]).status for kind, probe in probes.items()}
        page = json.loads(request(free, "/", headers={"Accept": "application/json"}).body)
    finally:
        proc.signal()
        proc.finish()
    assert all(probe["port"] == port["name"] for probe in probes.values())
    assert statuses == {"startupProbe": 200, "readinessProbe": 200, "livenessProbe": 200}
    assert (page["pod"], page["namespace"], page["node"], page["pod_ip"]) == \
        ("friendlyhello-7d9c-x2x4q", "demo", "node-1", "10.1.2.3")
    assert "pod friendlyhello-7d9c-x2x4q" in line and "node node-1" in line


def test_the_grace_period_covers_the_shutdown_delay_and_the_drain():
    spec = one("Deployment", "friendlyhello")["spec"]["template"]["spec"]
    env = pod_environment(web_container())
    assert spec["terminationGracePeriodSeconds"] > float(env["SHUTDOWN_DELAY"]) + float(env["DRAIN_TIMEOUT"])
    readiness = web_container()["readinessProbe"]
    assert readiness["periodSeconds"] * readiness["failureThreshold"] < float(env["SHUTDOWN_DELAY"])


def test_the_image_and_version_are_the_ones_the_readme_and_server_name():
    with open(os.path.join(ROOT, "README.md")) as readme:
        built = re.search(r"^docker build -t (\S+) \.$", readme.read(), re.M).group(1)
    assert web_container()["image"] in (built, built + ":latest")
    labels = one("Deployment", "friendlyhello")["metadata"]["labels"]
    assert labels["app.kubernetes.io/version"] == friendlyhello.VERSION
    with open(os.path.join(ROOT, "Dockerfile")) as dockerfile:
        assert re.search(r"^USER (\d+)", dockerfile.read(), re.M).group(1) == \
            str(web_container()["securityContext"]["runAsUser"])


@pytest.mark.slow  # a server process, for the quick loop's time
def test_the_tls_pod_serves_https_from_the_secret_s_two_files_beside_its_probes(tmp_path):
    """The overlay's environment, with the Secret's mount moved to a folder here holding what a
    kubernetes.io/tls Secret holds: tls.crt and tls.key."""
    from certificates import certificates
    from test_tls import client_context, https
    certs = certificates()
    (deployment,) = [r for r in tls_resources() if r["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    (mount,) = container["volumeMounts"]
    env = pod_environment(container)
    folder = tmp_path / "secret"
    folder.mkdir()
    for source, name in ((certs.pem("ecdsa"), "tls.crt"), (certs.key("ecdsa"), "tls.key")):
        with open(source) as file:
            (folder / name).write_text(file.read())
    moved = {k: v.replace(mount["mountPath"], str(folder)) for k, v in env.items()}
    plain, tls_port = free_port(), free_port()
    proc = Process({**moved, "PORT": str(plain), "TLS_PORT": str(tls_port), "BIND": "127.0.0.1",
                    "REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(free_port()), "REDIS_TIMEOUT": "0.5"})
    try:
        proc.wait_listening()
        probe = request(plain, container["readinessProbe"]["httpGet"]["path"]).status
        status, _, body = https(tls_port, "/", client_context(certs))
    finally:
        proc.signal()
        proc.finish()
    assert env["TLS_CERT"] == mount["mountPath"] + "/tls.crt" and env["TLS_KEY"] == mount["mountPath"] + "/tls.key"
    assert mount["readOnly"] is True and env["TLS_PORT"] == "8443"
    assert probe == 200 and status == 200 and body.startswith(b"<h3>Hello")


# -- behind Redis Sentinel: `kubectl apply -k k8s/sentinel/` ----------------------------------------

def sentinel_overlay(kind, name):
    (found,) = [r for r in overlay_resources("sentinel") if r["kind"] == kind and r["metadata"]["name"] == name]
    return found


def test_the_sentinel_overlay_validates_and_every_pod_meets_the_restricted_standard():
    rendered = overlay_resources("sentinel")
    for document in rendered:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
    pods = [r["spec"]["template"]["spec"] for r in rendered if r["kind"] in ("Deployment", "StatefulSet")]
    assert len(pods) == 3 and [restricted_violations(pod) for pod in pods] == [[], [], []]
    for name in ("redis", "redis-sentinel"):
        statefulset = sentinel_overlay("StatefulSet", name)
        (container,) = statefulset["spec"]["template"]["spec"]["containers"]
        names = [e["name"] for e in container["env"]]
        me = container["env"][names.index("ME")]["value"]  # its own name, its sentinel id made from it
        assert statefulset["spec"]["replicas"] == 3 and names.index("POD_NAME") < names.index("ME")
        assert me == f"$(POD_NAME).{statefulset['spec']['serviceName']}"


def test_behind_the_sentinels_the_web_pods_settings_load_and_name_each_sentinel_pod():
    (container,) = sentinel_overlay("Deployment", "friendlyhello")["spec"]["template"]["spec"]["containers"]
    env = pod_environment(container)
    config = settings.load_config([], env)  # REDIS_HOST is gone: with it, the settings refuse to start
    assert "REDIS_HOST" not in env and config.redis_wait_replicas == "all"
    statefulset = sentinel_overlay("StatefulSet", "redis-sentinel")
    service = statefulset["spec"]["serviceName"]
    assert [f"{h}:{p}" for h, p in config.redis_sentinels] == [
        f"redis-sentinel-{n}.{service}:26379" for n in range(statefulset["spec"]["replicas"])]


def _policy_admits(policy, labels, port):
    return any(port in [p["port"] for p in rule["ports"]]
               and any(peer["podSelector"]["matchLabels"].items() <= labels.items() for peer in rule["from"])
               for rule in policy["spec"]["ingress"])


def test_behind_the_sentinels_every_pod_reaches_what_it_must_and_the_services_resolve_unready_pods():
    web = sentinel_overlay("Deployment", "friendlyhello")["spec"]["template"]["metadata"]["labels"]
    redis = sentinel_overlay("StatefulSet", "redis")["spec"]["template"]["metadata"]["labels"]
    sentinel = sentinel_overlay("StatefulSet", "redis-sentinel")["spec"]["template"]["metadata"]["labels"]
    to_redis = sentinel_overlay("NetworkPolicy", "redis")
    to_sentinels = sentinel_overlay("NetworkPolicy", "redis-sentinel")
    assert to_redis["spec"]["podSelector"]["matchLabels"].items() <= redis.items()
    assert not to_redis["spec"]["podSelector"]["matchLabels"].items() <= sentinel.items()
    assert to_sentinels["spec"]["podSelector"]["matchLabels"].items() <= sentinel.items()
    for client in (web, redis, sentinel):  # replication, the sentinels' watch, the web's writes
        assert _policy_admits(to_redis, client, 6379)
    for client in (web, redis, sentinel):  # the web's questions, a starting pod's, the sentinels' own
        assert _policy_admits(to_sentinels, client, 26379)
    for service, labels in (("redis", redis), ("redis-sentinel", sentinel)):
        spec = sentinel_overlay("Service", service)["spec"]
        assert spec["clusterIP"] == "None" and spec["publishNotReadyAddresses"] is True
        assert spec["selector"].items() <= labels.items()


def start_script(tmp_path):
    """start.sh as the ConfigMap holds it, and a redis-server on PATH that writes its arguments
    (and, for a sentinel, its configuration) to a file instead of serving."""
    script = tmp_path / "start.sh"
    script.write_text(sentinel_overlay("ConfigMap", "redis-start")["data"]["start.sh"])
    stub = tmp_path / "bin"
    stub.mkdir()
    (stub / "redis-server").write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$ARGS"\n'
                                       '[ "${2:-}" = --sentinel ] && cat "$1" >> "$ARGS"\nexit 0\n')
    (stub / "redis-server").chmod(0o755)

    def start(kind, pod, sentinels, first_primary="localhost"):
        """start.sh run as this pod; ``first_primary`` stands for redis-0.redis (which does not
        resolve here): the first primary's name, looked up only when no sentinel answers."""
        args = tmp_path / f"{pod}.args"
        service = "redis" if kind == "redis" else "redis-sentinel"
        env = {"PATH": f"{stub}:{os.environ['PATH']}", "ARGS": str(args), "ME": f"{pod}.{service}",
               "DATA": str(tmp_path), "MASTER": "mymaster", "FIRST_PRIMARY": first_primary,
               "SENTINELS": " ".join(f"{h}:{p}" for h, p in sentinels)}
        done = subprocess.run(["/bin/sh", str(script), kind], env=env, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        return args.read_text().split("\n")

    return start


def test_at_the_first_start_no_sentinel_answers_redis_0_is_the_primary_and_the_others_its_replicas(tmp_path):
    start = start_script(tmp_path)
    nobody = [("127.0.0.1", free_port()), ("127.0.0.1", free_port())]
    first = start("redis", "redis-0", nobody, first_primary="redis-0.redis")  # its own name: not looked up
    second = start("redis", "redis-1", nobody)
    assert "--replicaof" not in first and "--min-replicas-to-write" in first and "--appendfsync" in first
    assert second[second.index("--replicaof"):][:3] == ["--replicaof", "127.0.0.1", "6379"]  # an address
    watcher, again, other = (start("sentinel", pod, nobody) for pod in ("redis-sentinel-1", "redis-sentinel-1",
                                                                         "redis-sentinel-2"))
    assert "sentinel monitor mymaster 127.0.0.1 6379 2" in watcher
    assert not [line for line in watcher + second if "announce" in line or "hostnames" in line]
    ids = [[line.split()[2] for line in lines if line.startswith("sentinel myid ")]
           for lines in (watcher, again, other)]
    assert ids[0] == ids[1] != ids[2] and all(len(i) == 1 and len(i[0]) == 40 for i in ids)  # one per name


def test_a_server_the_sentinels_name_by_one_of_its_own_addresses_starts_as_the_primary(tmp_path):
    """A sentinel's answer is an address: a server restarted where it was (its address kept) is
    still the primary, and any other server becomes its replica."""
    own = subprocess.run(["hostname", "-I"], capture_output=True, text=True, check=True).stdout.split()[0]
    listener = socket.create_server(("127.0.0.1", 0))
    answer = f"*2\r\n${len(own)}\r\n{own}\r\n$4\r\n6379\r\n".encode()

    def sentinel():  # answers every question with that address
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            with connection:
                connection.recv(4096)
                connection.sendall(answer)

    threading.Thread(target=sentinel, daemon=True).start()
    try:
        start = start_script(tmp_path)
        named = [("127.0.0.1", listener.getsockname()[1])]
        primary = start("redis", "redis-1", named, first_primary="nowhere.invalid")
        watcher = start("sentinel", "redis-sentinel-0", named, first_primary="nowhere.invalid")
    finally:
        listener.close()
    assert "--replicaof" not in primary
    assert f"sentinel monitor mymaster {own} 6379 2" in watcher


@pytest.mark.slow  # real servers and sentinels
def test_a_restarted_redis_0_asks_the_sentinels_and_comes_back_a_replica_of_the_primary_they_name(tmp_path):
    from sentinel import Replicated

    start = start_script(tmp_path)
    with Replicated() as servers:
        primary = servers.primary()
        dead = ("127.0.0.1", free_port())  # the first sentinel listed is away: the next is asked
        restarted = start("redis", "redis-0", [dead, *servers.addresses])
        watcher = start("sentinel", "redis-sentinel-0", [dead, *servers.addresses])
    assert restarted[restarted.index("--replicaof"):][:3] == ["--replicaof", "127.0.0.1", str(primary)]
    assert f"sentinel monitor mymaster 127.0.0.1 {primary} 2" in watcher
