import re
import subprocess
import sys


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gigi_crdt", *args], capture_output=True, text=True, timeout=120)


def test_demo_tells_the_offline_story_over_authenticated_links() -> None:
    result = run("demo")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    meeting, away, back = split(result.stdout, "bob and carol come online", "carol goes offline", "carol comes back")
    assert "TLS 1.3, both ends authenticated" in meeting
    assert len(re.findall(r"the same on both screens\n +\d{5}( \d{5}){11}\n", meeting)) == 2
    assert "[carol] alice: Saturday at 9?" in meeting
    assert "[alice] carol went offline" in away
    assert "[bob] alice: And a map" in away
    assert "[carol] 3 messages arrived that were sent while she was offline" in back
    assert "[carol]   bob: See you at the north gate   (missed)" in back
    assert "[alice] carol has read alice's messages up to: And a map" in back
    assert re.search(r"alice: Bring water +delivered to bob, carol; read by carol", back)
    assert "Saturday at 9?" not in back.split("alice's history")[0]  # only what she missed crossed


def split(text: str, *markers: str) -> list[str]:
    """The parts of ``text`` after each marker, in order (each must be there)."""
    parts: list[str] = []
    for marker in reversed(markers):
        text, found, after = text.rpartition(marker)
        assert found, marker
        parts.insert(0, after)
    return parts


def test_wrong_arguments_give_usage_not_a_traceback() -> None:
    result = run("no-such-command")
    assert result.returncode == 2
    assert "usage: gigi-crdt" in result.stderr
    assert "Traceback" not in result.stderr
