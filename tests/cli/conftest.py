"""The CLI tests' shared fixture: ``poolkit serve`` with the server's ``run`` replaced."""

from __future__ import annotations

import pytest


@pytest.fixture
def served(monkeypatch):
    """``poolkit serve`` with ``poolkit.entrypoints.server.run`` replaced: the keyword arguments it
    gets, and as ``models`` the model each of its loaders loads (nothing is loaded)."""
    pytest.importorskip("fastapi")
    import poolkit.entrypoints.server

    from poolkit import LLM

    calls: list[dict] = []

    def fake_run(loaders, **kwargs):
        with monkeypatch.context() as m:
            m.setattr(LLM, "from_args", classmethod(lambda cls, args: args))
            models = [loader().model for loader in (loaders if isinstance(loaders, list) else [loaders])]
        calls.append({"models": models, **kwargs})

    monkeypatch.setattr(poolkit.entrypoints.server, "run", fake_run)
    return calls
