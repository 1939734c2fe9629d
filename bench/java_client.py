"""The RabbitMQ Java client as a baseline (cases of ``python -m bench``).

``bench/java/AmqpBaseline.java`` runs the same method as the Python cases (256-byte JSON body,
persistent, durable classic queue through the default exchange; confirms and ``mandatory`` with
at most WINDOW unconfirmed; manual acks one per message). It is built on first use with
``javac`` against Debian's ``librabbitmq-client-java`` (``/usr/share/java/amqp-client.jar`` and
``slf4j-api.jar``) into a cache folder keyed by the source's hash. Where ``javac``, ``java`` or
the jars are missing, :func:`available` says why and the suite leaves the Java cases out with
that note (``apt-get install default-jdk-headless librabbitmq-client-java``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from bench._harness import WARMUP

SOURCE = Path(__file__).with_name("java") / "AmqpBaseline.java"
JARS = (Path("/usr/share/java/amqp-client.jar"), Path("/usr/share/java/slf4j-api.jar"))
PUBLISH_QUEUE = "bench.publish"


def available() -> str | None:
    """None when the Java baseline can run here, else why not."""
    missing = [tool for tool in ("javac", "java") if shutil.which(tool) is None]
    missing += [str(jar) for jar in JARS if not jar.is_file()]
    if missing:
        return (
            f"Java baseline skipped: missing {', '.join(missing)} "
            "(apt-get install default-jdk-headless librabbitmq-client-java)"
        )
    return None


def _built() -> str:
    """The classpath of the compiled baseline, compiling it once per source version."""
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    out = cache / "amqp-bus-bench" / f"java-{digest}"
    if not (out / "AmqpBaseline.class").is_file():
        out.mkdir(parents=True, exist_ok=True)
        classpath = ":".join(map(str, JARS))
        subprocess.run(
            ["javac", "-nowarn", "-cp", classpath, "-d", str(out), str(SOURCE)],
            check=True,
            capture_output=True,
            timeout=300,
        )
    return ":".join([*map(str, JARS), str(out)])


def _run(*args: str, timeout: float) -> dict[str, Any]:
    reason = available()
    if reason is not None:
        raise RuntimeError(reason)
    result = subprocess.run(
        ["java", "-cp", _built(), "AmqpBaseline", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"java baseline failed: {result.stderr.strip()[-2000:]}")
    data: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return data


def publish(url: str, seconds: float, window: int, properties: str = "minimal") -> dict[str, Any]:
    """``properties``: ``minimal`` (content type and delivery mode, as the issue's baseline) or
    ``ours`` (also a new message and correlation id, the time and an app id per message, as
    amqp-bus sends them: the broker's work per message then matches ours)."""
    return _run(
        "publish", url, PUBLISH_QUEUE, str(seconds), str(window), str(WARMUP), properties,
        timeout=seconds + 120,
    )  # fmt: skip


def consume(url: str, messages: int, prefetch: int) -> dict[str, Any]:
    from bench.consume import QUEUE, fill

    fill(url, messages)
    data = _run("consume", url, QUEUE, str(messages), str(prefetch), timeout=660)
    return {**data, "case": "java"}
