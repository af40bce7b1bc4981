"""No handler of the app shows an exception to the browser: whatever a handler raises reaches the user as
one readable ``gr.Error`` — a ``CdraError``'s own message (the user's to fix), or, for a bug, a generic
line while the traceback goes to the server log. ``guard_handlers(demo)`` wraps every event of a Blocks."""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any

import gradio as gr

from alignment.errors import CdraError

log = logging.getLogger(__name__)
UNEXPECTED = "Something went wrong on the server (it is logged for the operator). Please try again."


def _readable(exc: Exception, name: str) -> gr.Error:
    if isinstance(exc, gr.Error):
        return exc
    if isinstance(exc, CdraError):
        return gr.Error(str(exc))
    log.exception("handler %s failed", name)
    return gr.Error(UNEXPECTED)


def guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` (plain, generator, async or async generator) with every exception made a readable gr.Error;
    the signature and type hints stay visible to Gradio (``gr.Request`` injection needs them)."""
    name = getattr(fn, "__qualname__", repr(fn))
    if inspect.isasyncgenfunction(fn):
        @functools.wraps(fn)
        async def agen(*args: Any, **kwargs: Any):
            try:
                async for item in fn(*args, **kwargs):
                    yield item
            except Exception as exc:  # noqa: BLE001 - the point of this wrapper
                raise _readable(exc, name) from None
        return agen
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen(*args: Any, **kwargs: Any):
            try:
                yield from fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001
                raise _readable(exc, name) from None
        return gen
    if inspect.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def coro(*args: Any, **kwargs: Any):
            try:
                return await fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001
                raise _readable(exc, name) from None
        return coro

    @functools.wraps(fn)
    def plain(*args: Any, **kwargs: Any):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001
            raise _readable(exc, name) from None
    return plain


def guard_handlers(demo: gr.Blocks) -> gr.Blocks:
    """Wrap every Python event handler of ``demo`` (once)."""
    for block_fn in demo.fns.values():
        if block_fn.fn is not None and not getattr(block_fn.fn, "_cdra_guarded", False):
            block_fn.fn = guarded(block_fn.fn)
            block_fn.fn._cdra_guarded = True
    return demo
