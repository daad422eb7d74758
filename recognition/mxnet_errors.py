"""MXNet runs operators asynchronously: a failed operator's error is kept by the engine and
rethrown at a later synchronisation point (``asnumpy``, ``waitall``, at the latest at exit), one
per call, so code that catches a failure must also take the errors of its other failed operators
out, or the next unrelated ``asnumpy`` raises them."""
import mxnet as mx


def clear_pending_errors(limit=1000):
    """Take every pending operator error out of the engine (once nothing is left running)."""
    for _ in range(limit):
        try:
            mx.nd.waitall()
            return
        except mx.base.MXNetError:
            continue
