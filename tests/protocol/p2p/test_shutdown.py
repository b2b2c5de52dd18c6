"""py-libp2p's harmless shutdown race (a message arriving while the host closes) prints no traceback."""

from __future__ import annotations

import logging

import pytest

from protocol.p2p.host import SHUTDOWN_RACE, _is_shutdown_race, _quiet_shutdown_race


def test_only_the_shutdown_race_is_recognized() -> None:
    race = RuntimeError(SHUTDOWN_RACE)
    assert _is_shutdown_race(race)
    assert _is_shutdown_race(ExceptionGroup("nursery", [race, ExceptionGroup("inner", [RuntimeError(SHUTDOWN_RACE)])]))
    assert not _is_shutdown_race(ExceptionGroup("nursery", [race, ValueError("bad frame")]))
    assert not _is_shutdown_race(RuntimeError("connection reset"))


def test_libp2p_loggers_drop_the_race_and_keep_other_errors(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("libp2p.tools.anyio_service.TrioManager.TestService")
    _quiet_shutdown_race()
    _quiet_shutdown_race()  # idempotent
    assert len(logger.filters) == 1
    with caplog.at_level(logging.ERROR, logger=logger.name):
        for exc in (ExceptionGroup("nursery", [RuntimeError(SHUTDOWN_RACE)]), RuntimeError("connection reset")):
            try:
                raise exc
            except BaseException:  # noqa: BLE001
                logger.error("task exited with error", exc_info=True)
    assert [r.exc_info[1].args[0] for r in caplog.records] == ["connection reset"]
