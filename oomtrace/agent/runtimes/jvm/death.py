"""A JVM that ended itself on OutOfMemoryError, told from its own words:
"Terminating due to java.lang.OutOfMemoryError" (ExitOnOutOfMemoryError,
exit 3), "Aborting due to java.lang.OutOfMemoryError" (CrashOnOutOfMemoryError,
SIGABRT, with an hs_err file saying "OutOfMemory encountered"), or an
uncaught one in the main thread (exit 1). An exit without those words is an
ordinary failure, never an OOM."""

from __future__ import annotations

import re

SIGABRT = 6
_EXIT_ON = re.compile(r"Terminating due to java\.lang\.OutOfMemoryError[^\n]{0,200}")
_CRASH_ON = re.compile(r"Aborting due to java\.lang\.OutOfMemoryError[^\n]{0,200}")
_UNCAUGHT = re.compile(r'Exception in thread "main" java\.lang\.OutOfMemoryError[^\n]{0,200}')
_HS_ERR = re.compile(r"#\s+fatal error: OutOfMemory encountered[^\n]{0,200}")


def oom_words(status: int, signal: int, stderr_tail: str, hs_err_head: str) -> str | None:
    """The JVM's own line saying it died of OutOfMemoryError, or None."""
    if signal == 0 and status == 3:
        found = _EXIT_ON.findall(stderr_tail)
    elif signal == SIGABRT:
        found = _CRASH_ON.findall(stderr_tail) or _HS_ERR.findall(hs_err_head)
    elif signal == 0 and status == 1:
        found = _UNCAUGHT.findall(stderr_tail)
    else:
        return None
    return found[-1].strip() if found else None
