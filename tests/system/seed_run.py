"""Run one seed example unmodified, with its placeholders filled in and sleeps capped.

    python seed_run.py FILE [--replace OLD=NEW]... [--set NAME=VALUE]... [--max-sleep S]

``--replace`` substitutes text (the seed's quoted placeholders), ``--set`` defines
a global before the example runs (its bare placeholders such as
``instance_uuid``), and ``--max-sleep`` caps every ``time.sleep``.
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    """Parse arguments, patch time.sleep, exec the example as __main__."""
    parser = argparse.ArgumentParser()
    parser.add_argument("file")
    parser.add_argument("--replace", action="append", default=[])
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--max-sleep", type=float, default=None)
    args = parser.parse_args()
    with open(args.file) as f:
        source = f.read()
    for item in args.replace:
        old, _, new = item.partition("=")
        assert old in source, f"{old!r} is not in {args.file}"
        source = source.replace(old, new)
    if args.max_sleep is not None:
        real_sleep, cap = time.sleep, args.max_sleep
        time.sleep = lambda seconds: real_sleep(min(seconds, cap))
    env: dict[str, object] = {"__name__": "__main__", "__file__": args.file}
    for item in args.set:
        name, _, value = item.partition("=")
        env[name] = value
    exec(compile(source, args.file, "exec"), env)


if __name__ == "__main__":
    main()
