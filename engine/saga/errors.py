"""The errors a caller of the sagas can cause, each with a stable ``code``."""

from __future__ import annotations


class UnknownSaga(LookupError):
    """A signal or a status query names a saga nobody started."""

    code = "unknown_saga"


class SignalRejected(Exception):
    """The flow cannot take this signal now (a capture before the authorization): nothing is
    recorded, so the sender's own retry delivers it again later."""

    code = "signal_rejected"
