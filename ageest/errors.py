"""Errors a user can cause, and how every command shows them: one line on stderr, exit status 2
(git, pip and papermill do the same); the traceback only with ``--debug``.

Library code raises :class:`UserError` subclasses (a stale run folder, a bad profile), or the
built-in ``ValueError`` / ``FileNotFoundError`` family for bad input; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user fixes (the message names the file or parameter and the fix)."""


#: library spellings of options, as the command line spells them (error messages are written
#: for library callers; a command-line user is shown the flag)
CLI_SPELLING = {"on_bad='skip'": "--on-bad skip", 'on_bad="skip"': "--on-bad skip",
                "allow_outside_root=True": "allow_outside_root: true (grid YAML)",
                "declare age_range": "declare --age-range"}

#: what every command prints as one line (``ageest.data.DataError`` is a ``ValueError``); any
#: other ``OSError`` that names a path is one too (:func:`format_os_error`)
USER_ERRORS: tuple[type[BaseException], ...] = (
    UserError, ValueError, FileNotFoundError, NotADirectoryError, PermissionError)

#: what to do about an operating-system error on a path the user gave
_OS_FIXES = {IsADirectoryError: "it is a folder; give a file name",
             FileExistsError: "it already exists; choose another name or remove it",
             NotADirectoryError: "a part of it is a file, not a folder; fix the path"}


def format_user_error(command: str, exc: BaseException) -> str:
    """``ageest <command>: error: <message>`` with the library spellings replaced by flags;
    multi-line messages (a list of files) keep their lines, indented.

    >>> format_user_error("run", ValueError("on_bad='skip' was not given"))
    'ageest run: error: --on-bad skip was not given'
    """
    text = str(exc)
    for lib, cli in CLI_SPELLING.items():
        text = text.replace(lib, cli)
    first, *rest = text.strip().splitlines() or [type(exc).__name__]
    return "\n".join([f"ageest {command}: error: {first}", *(f"  {r}" for r in rest)])


def format_os_error(command: str, exc: OSError) -> str:
    """One line for an operating-system error about a path: the path, what the system said and
    what to do.

    >>> format_os_error("predict", IsADirectoryError(21, "Is a directory", "out"))
    'ageest predict: error: out: Is a directory; it is a folder; give a file name'
    """
    fix = next((f for kind, f in _OS_FIXES.items() if isinstance(exc, kind)),
               "check the path and its permissions")
    return f"ageest {command}: error: {exc.filename}: {exc.strerror or exc}; {fix}"
