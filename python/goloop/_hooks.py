"""What the C core calls back into Python for: the slow, rare paths
(formatting handles, fatal transport errors, debug-mode checks), kept here
so the C code stays the hot path and nothing else."""
import sys
from asyncio import coroutines, format_helpers
from asyncio.log import logger


def format_handle(handle):
    # The text asyncio's Handle.__repr__ puts between its angle brackets.
    info = []
    if handle._cancelled:
        info.append('cancelled')
    if type(handle).__name__ == 'TimerHandle':
        info.append(f'when={handle._when}')
    cached = handle._repr
    if handle._callback is not None:
        info.append(format_helpers._format_callback_source(handle._callback, handle._args))
    elif cached is not None:
        return cached
    tb = handle._source_traceback
    if tb:
        frame = tb[-1]
        info.append(f'created at {frame[0]}:{frame[1]}')
    return ' '.join(info)


def fatal_error(transport, exc, message):
    # asyncio's _SelectorTransport._fatal_error: OSErrors (a reset peer, a
    # broken pipe) are ordinary endings, logged only in debug mode.
    loop = transport._loop
    if isinstance(exc, OSError):
        if loop is not None and loop.get_debug():
            logger.debug("%r: %s", transport, message, exc_info=True)
    elif loop is not None:
        loop.call_exception_handler({
            'message': message,
            'exception': exc,
            'transport': transport,
            'protocol': transport.get_protocol(),
        })
    transport._force_close(exc)


def slow_callback(loop, handle, seconds):
    if seconds >= loop.slow_callback_duration:
        logger.warning('Executing %s took %.3f seconds', _describe(handle), seconds)


def _describe(handle):
    if isinstance(handle, str):  # an I/O completion, described by the C core
        return handle
    cb = handle._callback
    if cb is not None and isinstance(getattr(cb, '__self__', None), coroutines.types.CoroutineType):
        return repr(cb.__self__)
    return repr(handle)


def extract_stack():
    return format_helpers.extract_stack(sys._getframe(2))


def check_call(loop, callback, method):
    if method != 'call_soon_threadsafe':
        loop._check_thread()
    loop._check_callback(callback, method)
