"""The default queue's waiting messages, read straight from the broker the tests' app sends to."""

from __future__ import annotations

import json
from typing import Any

from kombu import Connection

from app.settings import Settings


def broker_messages(settings: Settings) -> list[dict[str, Any]]:
    """Every waiting message of the default queue, consumed: task, args and eta."""
    found = []
    with Connection(settings.broker_url) as connection:
        channel = connection.default_channel
        channel.queue_declare(queue="default", durable=True, auto_delete=False)
        while (message := channel.basic_get("default", no_ack=True)) is not None:
            args, _kwargs, _embed = json.loads(message.body)
            found.append({"task": message.headers["task"], "args": args, "eta": message.headers.get("eta")})
    return found
