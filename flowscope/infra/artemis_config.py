"""The files of Flowscope's Artemis broker instance that it writes itself, as pure text.

`artemis create` makes the instance once; these are rewritten at every start, so a change of
port or heap takes effect: broker.xml (ours entirely), the web binding in bootstrap.xml, the
Jolokia access policy and the JVM's heap in artemis.profile.
"""

from __future__ import annotations

import re
from importlib import resources
from string import Template

from base.settings import LOOPBACK, ArtemisSettings

# `artemis create --java-memory` below 512M still writes -Xms512M: a JVM whose initial heap is
# larger than its maximum refuses to start. The broker grows its heap as it needs.
INITIAL_HEAP = "64M"
WEB_BINDING = re.compile(r'(<binding\s+name="artemis"\s+uri=")[^"]*(")')
JAVA_HEAP = re.compile(r"-Xm([sx])\S+")


def render_broker_xml(artemis: ArtemisSettings, host: str = LOOPBACK) -> str:
    """broker.xml: the AMQP and CORE acceptors on host (loopback natively), persistence in the
    instance's data/, dead letters to DLQ.<queue>, redelivery backing off, ANYCAST by default."""
    template = resources.files("flowscope.infra").joinpath("templates/artemis-broker.xml")
    return Template(template.read_text()).substitute(
        host=host, amqp_port=artemis.port, core_port=artemis.core_port)


def render_jolokia_access(host: str = LOOPBACK) -> str:
    """jolokia-access.xml: requests must come from an origin on host (checked server-side)."""
    return ("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
            "<!-- Jolokia's policy for Flowscope's broker (flowscope/infra/artemis_config.py). "
            "-->\n<restrict>\n  <cors>\n"
            f"    <allow-origin>*://{host}*</allow-origin>\n"
            "    <strict-checking/>\n  </cors>\n</restrict>\n")


def bind_web(bootstrap_xml: str, port: int, host: str = LOOPBACK) -> str:
    """bootstrap.xml with the web server (console and Jolokia) bound to http://host:port."""
    bound, count = WEB_BINDING.subn(rf"\g<1>http://{host}:{port}\g<2>", bootstrap_xml)
    if count != 1:
        raise ValueError("bootstrap.xml has no <binding name=\"artemis\" uri=...> to bind")
    return bound


def set_heap(profile: str, heap: str) -> str:
    """artemis.profile with the broker JVM's heap: -Xms INITIAL_HEAP, -Xmx heap (only the
    JAVA_ARGS assignment is touched, not its comments)."""
    sizes = {"s": INITIAL_HEAP, "x": heap}
    return "".join(
        JAVA_HEAP.sub(lambda m: f"-Xm{m.group(1)}{sizes[m.group(1)]}", line)
        if line.lstrip().startswith("JAVA_ARGS=") else line
        for line in profile.splitlines(keepends=True))
