"""What the source needs around the ``realtime`` client that the client does not offer itself."""

from __future__ import annotations

import logging
from collections.abc import Callable

from realtime import AsyncRealtimeChannel

from worker.sources.realtime_payload import rejected_change

# the module whose logger reports (and whose listener then drops) frames it cannot validate
CLIENT_LOGGER = "realtime._async.client"


class RejectedFrames(logging.Handler):
    """Hears the realtime client's log record for a ``postgres_changes`` frame of ``topic`` that it
    rejected (a change the server sent with a null ``commit_timestamp``), and hands over the frame.

    The client drops such a frame before any callback sees it; its log record is the only trace.
    Attached to the client's logger for as long as the subscription lives (``detach()``)."""

    def __init__(self, topic: str, on_rejected: Callable[[str, str], None]) -> None:
        super().__init__(level=logging.ERROR)
        self.topic, self.on_rejected = topic, on_rejected
        self._logger = logging.getLogger(CLIENT_LOGGER)
        self._logger.addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            found = rejected_change(record.getMessage(), self.topic)
            if found is not None:
                self.on_rejected(*found)
        except Exception:  # a logging handler must never break the client's listener task
            self.handleError(record)

    def detach(self) -> None:
        self._logger.removeHandler(self)


def discard_pending(channel: AsyncRealtimeChannel) -> None:
    """Cancel the timers of a dropped channel's unanswered pushes (join, leave) and its rejoin timer,
    so a torn-down client leaves no task behind."""
    channel.rejoin_timer.reset()
    channel.join_push.destroy()
    for push in list(channel.messages_waiting_for_ack.values()):
        push.destroy()
    channel.messages_waiting_for_ack.clear()
