"""The master's event loop: one selector, a clock, and containment of every callback.

Owns: waiting (the only `select()` in the master), running the callback of each ready
      descriptor, work deferred to the end of a round (`soon`), the clock every part
      reads (`clock()`), and what happens when a callback raises.
Never: knows what a descriptor is for. Each registration names a `Handler`: an object
       with the callback and a `contain(exc)` that knows what failing means for it
       (a client is answered 500 and closed, a worker is killed and replaced, an
       operator peer is dropped).

One round:

    select(timeout) ─> for each ready key: still registered as it was? ─> handler.on_event(mask)
                                                │ raises ─> handler.contain(exc)  (logged once, with the traceback)
                                                │ contain raises too ─> the round ends; the error escapes
    then every `soon` callback, in order (each contained like an event, by its handler)

A key is skipped if its descriptor was registered, modified or unregistered earlier in
the same round: the object it belonged to may be closed, and its number reused by a new
one. The selector is level-triggered, so an event skipped for a re-registration comes
again next round.
"""

from __future__ import annotations

import logging
import selectors
import time
from collections import deque
from typing import Callable, Deque, Set, Tuple

log = logging.getLogger("minirr")

READ = selectors.EVENT_READ
WRITE = selectors.EVENT_WRITE


class Handler:
    """What the loop calls for a registered descriptor. Subclasses override both."""

    __slots__ = ()

    def on_event(self, mask: int) -> None:
        raise NotImplementedError

    def contain(self, exc: BaseException) -> None:
        """`on_event` (or a `soon` callback of ours) raised `exc`: end what failed, keep
        the rest serving. Raising here ends the server (orderly, exit status 1)."""
        raise exc


class Loop:
    """The selector, the clock and the round. Parts register Handlers and read `now()`."""

    def __init__(self, selector: selectors.BaseSelector = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.selector = selector if selector is not None else selectors.DefaultSelector()
        self.clock = clock                 # monotonic seconds; a test passes a clock it moves by hand
        self._soon: Deque[Tuple[Handler, Callable[[], None]]] = deque()
        self._changed: Set[int] = set()    # descriptors (un)registered during this round

    # ---- registration --------------------------------------------------------------
    def register(self, fileobj, events: int, handler: Handler) -> None:
        self._changed.add(self.selector.register(fileobj, events, handler).fd)

    def modify(self, fileobj, events: int, handler: Handler) -> None:
        self._changed.add(self.selector.modify(fileobj, events, handler).fd)

    def unregister(self, fileobj) -> None:
        """Forget `fileobj` if it is registered (closing code calls this unconditionally)."""
        try:
            self._changed.add(self.selector.unregister(fileobj).fd)
        except (KeyError, ValueError):
            pass

    def registered(self, fileobj) -> bool:
        try:
            self.selector.get_key(fileobj)
        except (KeyError, ValueError):
            return False
        return True

    def soon(self, handler: Handler, callback: Callable[[], None]) -> None:
        """Run `callback` at the end of this round (contained by `handler`): for work that
        must not run inside the callback that asks for it (it would re-enter it)."""
        self._soon.append((handler, callback))

    # ---- one round -----------------------------------------------------------------
    def run_once(self, timeout: float) -> None:
        if self._soon:
            timeout = 0.0
        changed = self._changed
        changed.clear()
        for key, mask in self.selector.select(timeout):
            if changed and key.fd in changed:
                continue                   # unregistered or replaced earlier in this round
            handler = key.data
            try:
                handler.on_event(mask)
            except Exception as exc:
                handler.contain(exc)
        if self._soon:
            self.run_soon()

    def run_soon(self) -> None:
        soon = self._soon
        for _ in range(len(soon)):         # what these add runs next round, after a select
            handler, callback = soon.popleft()
            try:
                callback()
            except Exception as exc:
                handler.contain(exc)

    def close(self) -> None:
        self.selector.close()
