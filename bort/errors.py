"""User-facing errors: one line naming the file (and line or field) and what was expected."""
import functools
import sys


class BortError(Exception):
    """An error caused by user input; CLIs print it as one line and exit non-zero."""


def run_cli(main):
    """Wrap a CLI `main` so that BortError (and missing files) end the process with one line and exit 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except BortError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
        except FileNotFoundError as err:
            print(f"error: {err.filename}: file not found", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr)
            sys.exit(130)

    return wrapper
