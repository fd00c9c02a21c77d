"""The native Artemis broker's pure parts: the configuration it writes, the Jolokia client, the
status shape, and install's errors (no broker is started here)."""

from __future__ import annotations

import base64
import json
import shutil
import tarfile
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from base.errors import FlowscopeError
from base.settings import Settings
from flowscope.infra import artemis_config
from flowscope.infra.artemis import ArtemisPaths, ArtemisStatus, install
from flowscope.infra.jolokia import jolokia_request

NS = {"c": "urn:activemq:core"}
# The JAVA_ARGS line `artemis create --java-memory 384m` writes (abridged), and a comment.
PROFILE = """\
# JAVA_ARGS="$JAVA_ARGS -Xmx1G"
if [ -z "$JAVA_ARGS" ]; then
    JAVA_ARGS="-XX:+UseG1GC -Xms512M -Xmx384m -Dhawtio.realm=activemq "
fi
"""


def _core(text: str) -> ET.Element:
    core = ET.fromstring(text).find("c:core", NS)
    assert core is not None
    return core


def _setting(core: ET.Element, match: str) -> dict[str, str]:
    [found] = [item for item in core.iterfind("c:address-settings/c:address-setting", NS)
               if item.get("match") == match]
    return {child.tag.split("}")[1]: (child.text or "") for child in found}


def test_artemis_broker_xml_has_only_loopback_acceptors_on_the_configured_ports() -> None:
    settings = Settings.from_env({"FLOWSCOPE_ARTEMIS_PORT": "26101",
                                  "FLOWSCOPE_ARTEMIS_CORE_PORT": "26102"})
    core = _core(artemis_config.render_broker_xml(settings.artemis))
    acceptors = {item.get("name"): (item.text or "")
                 for item in core.iterfind("c:acceptors/c:acceptor", NS)}
    assert set(acceptors) == {"amqp", "core"}
    assert acceptors["amqp"].startswith("tcp://127.0.0.1:26101?")
    assert "protocols=AMQP;" in acceptors["amqp"]
    assert acceptors["core"].startswith("tcp://127.0.0.1:26102?")
    assert "protocols=CORE;" in acceptors["core"]
    assert core.findtext("c:name", namespaces=NS) == "flowscope"
    assert core.findtext("c:persistence-enabled", namespaces=NS) == "true"
    assert core.findtext("c:journal-type", namespaces=NS) == "NIO"
    assert core.findtext("c:journal-directory", namespaces=NS) == "data/journal"


def test_artemis_broker_xml_sends_dead_letters_to_a_queue_per_queue_and_backs_off() -> None:
    core = _core(artemis_config.render_broker_xml(Settings.from_env({}).artemis))
    every = _setting(core, "#")
    assert {key: every[key] for key in (
        "dead-letter-address", "auto-create-dead-letter-resources", "dead-letter-queue-prefix",
        "expiry-address", "redelivery-delay", "redelivery-delay-multiplier",
        "max-redelivery-delay", "max-delivery-attempts", "default-address-routing-type",
        "default-queue-routing-type", "auto-create-queues", "auto-create-addresses",
        "auto-delete-queues", "auto-delete-addresses")} == {
        "dead-letter-address": "DLA", "auto-create-dead-letter-resources": "true",
        "dead-letter-queue-prefix": "DLQ.", "expiry-address": "ExpiryQueue",
        "redelivery-delay": "500", "redelivery-delay-multiplier": "2",
        "max-redelivery-delay": "4000", "max-delivery-attempts": "4",
        "default-address-routing-type": "ANYCAST", "default-queue-routing-type": "ANYCAST",
        "auto-create-queues": "true", "auto-create-addresses": "true",
        "auto-delete-queues": "false", "auto-delete-addresses": "false"}
    assert _setting(core, "DLA")["default-queue-routing-type"] == "MULTICAST"
    assert _setting(core, "activemq.management#")["auto-create-queues"] == "true"
    addresses = {item.get("name"): [child.tag.split("}")[1] for child in item]
                 for item in core.iterfind("c:addresses/c:address", NS)}
    assert addresses == {"DLA": ["multicast"], "ExpiryQueue": ["anycast"]}


def test_artemis_broker_xml_for_a_container_binds_every_address() -> None:
    text = artemis_config.render_broker_xml(Settings.from_env({}).artemis, host="0.0.0.0")
    assert "127.0.0.1" not in text
    assert "tcp://0.0.0.0:5692?" in text
    assert "tcp://0.0.0.0:61636?" in text


def test_artemis_profile_heap_fix_puts_the_initial_heap_below_the_maximum() -> None:
    fixed = artemis_config.set_heap(PROFILE, "384m")
    java_args = fixed.splitlines()[2]
    assert "-Xms64M -Xmx384m" in java_args
    assert "-Xms512M" not in fixed
    assert fixed.splitlines()[0] == PROFILE.splitlines()[0]  # comments are left alone
    assert "-Xmx1g" in artemis_config.set_heap(fixed, "1g").splitlines()[2]


def test_artemis_web_binding_and_jolokia_origin_are_loopback() -> None:
    bootstrap = '<web path="web">\n  <binding name="artemis" uri="http://localhost:8161">\n'
    assert 'uri="http://127.0.0.1:26103"' in artemis_config.bind_web(bootstrap, 26103)
    with pytest.raises(ValueError, match="binding"):
        artemis_config.bind_web("<web/>", 26103)
    policy = ET.fromstring(artemis_config.render_jolokia_access())
    assert policy.findtext("cors/allow-origin") == "*://127.0.0.1*"
    assert policy.find("cors/strict-checking") is not None


def test_artemis_status_json_redacts_credentials() -> None:
    status = ArtemisStatus(True, 7, "amqp://app:s3cret@mq:5672",
                           "http://app:s3cret@mq:8161/console/jolokia", False, Path("/x.log"))
    assert status.as_json() == {"running": True, "pid": 7, "amqp_url": "amqp://***@mq:5672",
                                "management_url": "http://***@mq:8161/console/jolokia",
                                "log": "/x.log"}


@pytest.fixture
def jolokia() -> Iterator[tuple[str, list[dict[str, object]]]]:
    """A stand-in Jolokia on loopback that records each request and answers status 200."""
    seen: list[dict[str, object]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append({"path": self.path, "body": body, **{
                name: self.headers[name] for name in ("Origin", "Authorization",
                                                      "Content-Type")}})
            answer = json.dumps({"status": 200, "value": 1}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *_: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_port}", seen
    server.shutdown()
    thread.join(timeout=10)


def test_artemis_jolokia_request_posts_json_with_origin_and_basic_auth(
        jolokia: tuple[str, list[dict[str, object]]]) -> None:
    where, seen = jolokia
    body = {"type": "read", "mbean": "java.lang:type=Memory"}
    code, answer = jolokia_request(f"http://us%40er:p%3Ass@{where}/console/jolokia", body)
    assert (code, answer) == (200, {"status": 200, "value": 1})
    assert seen == [{"path": "/console/jolokia", "body": body, "Origin": f"http://{where}",
                     "Authorization": "Basic " + base64.b64encode(b"us@er:p:ss").decode(),
                     "Content-Type": "application/json"}]


def test_artemis_jolokia_request_says_none_when_nothing_answers() -> None:
    assert jolokia_request("http://a:b@127.0.0.1:9/console/jolokia", {}, 1.0) == (None, None)


def _path_with(tmp_path: Path, *programs: str) -> str:
    folder = tmp_path / "bin"
    folder.mkdir()
    for name in programs:
        found = shutil.which(name)
        assert found, f"{name} is needed on PATH for this test"
        (folder / name).symlink_to(found)
    return str(folder)


def test_artemis_install_without_java_names_the_component(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", _path_with(tmp_path))
    with pytest.raises(FlowscopeError) as caught:
        install(Settings.from_env({"FLOWSCOPE_HOME": str(tmp_path / "home")}))
    assert caught.value.component == "artemis"
    assert "java was not found on PATH" in caught.value.cause


def test_artemis_install_without_maven_names_it_and_the_external_broker(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", _path_with(tmp_path, "java"))
    with pytest.raises(FlowscopeError) as caught:
        install(Settings.from_env({"FLOWSCOPE_HOME": str(tmp_path / "home")}))
    rendered = caught.value.render()
    assert rendered.startswith("flowscope: artemis: mvn (Apache Maven) was not found on PATH")
    assert "FLOWSCOPE_ARTEMIS_URL" in rendered


def _archive(paths: ArtemisPaths, members: dict[str, bytes]) -> None:
    paths.archive.parent.mkdir(parents=True)
    source = paths.archive.parent / "src"
    for name, data in members.items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes(data)
        (source / name).chmod(0o755)
    with tarfile.open(paths.archive, "w:gz") as archive:
        for name in members:
            archive.add(source / name, arcname=name)


def test_artemis_install_unpacks_the_cached_archive_once_and_whole(tmp_path: Path) -> None:
    settings = Settings.from_env({"FLOWSCOPE_HOME": str(tmp_path)})
    paths = ArtemisPaths.of(settings)
    _archive(paths, {f"{paths.home.name}/bin/artemis": b"#!/bin/sh\n",
                     f"{paths.home.name}/lib/artemis-boot.jar": b"jar"})
    assert install(settings) == paths.home
    assert (paths.home / "bin" / "artemis").stat().st_mode & 0o100
    assert (paths.home / "lib" / "artemis-boot.jar").read_bytes() == b"jar"
    leftovers = [p.name for p in paths.home.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_artemis_install_of_a_broken_archive_is_a_clear_error_and_leaves_nothing(
        tmp_path: Path) -> None:
    settings = Settings.from_env({"FLOWSCOPE_HOME": str(tmp_path)})
    paths = ArtemisPaths.of(settings)
    _archive(paths, {"something-else/README": b"not artemis"})
    with pytest.raises(FlowscopeError) as caught:
        install(settings)
    assert f"holds no {paths.home.name}/bin/artemis" in caught.value.cause
    assert f"delete {paths.archive}" in (caught.value.hint or "")
    assert not paths.home.exists()
    assert [p.name for p in paths.home.parent.iterdir() if p.name.startswith(".")] == []
