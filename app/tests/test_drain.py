"""The drain on SIGTERM: serving goes on for the delay, then the server shuts down; a second
signal, or no delay, shuts it down at once."""

from __future__ import annotations

import signal
import time

import uvicorn

from memories.__main__ import DrainingServer


def server(delay: float) -> DrainingServer:
    async def app(scope: object, receive: object, send: object) -> None:
        pass

    return DrainingServer(uvicorn.Config(app), delay)


def test_the_first_signal_drains_for_the_delay_then_exits() -> None:
    draining = server(0.2)
    draining.handle_exit(signal.SIGTERM, None)
    assert draining.draining and not draining.should_exit, "still serving"
    time.sleep(0.1)
    assert not draining.should_exit
    time.sleep(0.25)
    assert draining.should_exit, "shut down once the delay is over"


def test_a_second_signal_or_no_delay_exits_at_once() -> None:
    draining = server(30)
    draining.handle_exit(signal.SIGTERM, None)
    assert not draining.should_exit
    draining.handle_exit(signal.SIGINT, None)
    assert draining.should_exit
    at_once = server(0)
    at_once.handle_exit(signal.SIGTERM, None)
    assert at_once.should_exit
