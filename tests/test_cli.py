import subprocess
import sys


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gigi_crdt", *args], capture_output=True, text=True, timeout=120)


def test_demo_shows_offline_messages_arriving() -> None:
    result = run("demo")
    assert result.returncode == 0, result.stderr
    after_return = result.stdout.split("carol comes back")[1]
    assert "[carol] 3 message(s) arrived that were sent while apart" in after_return
    assert "[carol]   bob: See you at the north gate   (missed)" in after_return
    assert "alice: Bring water   [read by carol]" in after_return
    assert "Traceback" not in result.stderr


def test_wrong_arguments_give_usage_not_a_traceback() -> None:
    result = run("no-such-command")
    assert result.returncode == 2
    assert "usage: gigi-crdt" in result.stderr
    assert "Traceback" not in result.stderr
