import subprocess
import sys


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gigi_crdt", *args], capture_output=True, text=True, timeout=120)


def test_demo_shows_offline_messages_arriving() -> None:
    result = run("demo")
    assert result.returncode == 0, result.stderr
    assert "carol received 4 new entries from bob" in result.stdout
    assert "Meeting at the north gate" in result.stdout.split("carol's history")[1]
    assert "[read by carol]" in result.stdout


def test_wrong_arguments_give_usage_not_a_traceback() -> None:
    result = run("no-such-command")
    assert result.returncode == 2
    assert "usage: gigi-crdt" in result.stderr
    assert "Traceback" not in result.stderr
