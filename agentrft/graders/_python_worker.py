"""Worker process for the python grader: runs a user's ``grade(sample, item)`` away from training.

Run as a script (not imported), it speaks JSON lines on stdin/stdout: the first line carries the
source, every later line one ``{"sample", "item"}`` request; each gets one reply line. The user's
code sees stdout redirected to stderr, so a stray ``print`` cannot corrupt the replies.
"""

import json
import os
import sys
import traceback


def _error(exc: BaseException) -> str:
    last = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    where = f" (line {last[0].lineno})" if last and last[0].filename == "<grader>" else ""
    return f"{type(exc).__name__}: {exc}{where}"


def main() -> None:
    replies = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def reply(payload: dict) -> None:
        replies.write(json.dumps(payload) + "\n")
        replies.flush()

    namespace: dict = {"__name__": "grader"}
    try:
        exec(compile(json.loads(sys.stdin.readline())["source"], "<grader>", "exec"), namespace)
        grade = namespace["grade"]
        if not callable(grade):
            raise TypeError("grade is not a function")
    except KeyError:
        reply({"error": "source defines no grade(sample, item) function"})
        return
    except BaseException as exc:  # the user's module failed to load: report, then stop
        reply({"error": _error(exc)})
        return
    reply({"ready": True})
    for line in sys.stdin:
        request = json.loads(line)
        try:
            result = grade(request["sample"], request["item"])
        except BaseException as exc:
            reply({"error": _error(exc)})
            continue
        if isinstance(result, bool) or not isinstance(result, (int, float)):
            reply({"error": f"grade() returned {result!r:.60}, expected a number"})
        else:
            reply({"score": float(result)})


if __name__ == "__main__":
    main()
