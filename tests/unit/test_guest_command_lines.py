"""How the guest agent runs a command line: simple ones directly, the rest through /bin/sh."""

from __future__ import annotations

import pytest

from guestagent.handlers import argv_for

PATH = "/usr/local/bin:/usr/bin:/bin"


@pytest.mark.parametrize(
    ("command", "program", "args"),
    [
        ("true", "true", []),
        ("cat /etc/os-release", "cat", ["/etc/os-release"]),
        ("  uname   -a ", "uname", ["-a"]),
    ],
)
def test_simple_commands_run_without_a_shell(command: str, program: str, args: list[str]) -> None:
    """Plain words naming a program on PATH start that program directly."""
    argv = argv_for(command, PATH)
    assert argv[0].endswith(f"/{program}") and argv[1:] == args


@pytest.mark.parametrize(
    "command",
    [
        "echo $HOME",
        "ls *",
        "true && false",
        "echo 'a b'",
        'echo "a b"',
        "echo a\\ b",
        "cat < /etc/hostname",
        "FOO=1 env",
        "cd /tmp",
        "exit 3",
        "no-such-command-here",
        "./relative-script",
        "echo ~",
        "echo `date`",
        "true # comment",
        "printf a\nprintf b",
        "",
    ],
)
def test_anything_else_goes_through_the_shell(command: str) -> None:
    """Shell syntax, builtins, unknown commands and paths keep the shell's meaning."""
    assert argv_for(command, PATH) == ["/bin/sh", "-c", command]
