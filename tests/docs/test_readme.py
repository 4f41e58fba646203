"""Every Python snippet in the README runs, as a reader would run it."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import attrs
import pytest
from chat_server import ChatServer

from terraphim_actors import DeadLetterReason, DeliveryStats, SystemStats, cast
from terraphim_actors._core.codec import decode, encode

README = Path(__file__).resolve().parents[2] / "README.md"
SNIPPETS = re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.DOTALL | re.MULTILINE)


def test_readme_has_snippets() -> None:
    """The README shows code (a broken extraction would pass every snippet test vacuously)."""
    assert len(SNIPPETS) >= 6


@pytest.mark.parametrize("snippet", SNIPPETS, ids=[f"snippet-{n}" for n in range(len(SNIPPETS))])
def test_readme_snippet_runs(snippet: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """The snippet runs to the end without error, its assertions included: on a virtual
    clock, but for a snippet that talks to a real server, whose answers take real time (its
    waits are bounded in the snippet itself): a nats-server, or a model endpoint (the local
    one the tests start, at the URL the snippet reads from ``CHAT_BASE_URL``)."""
    script = tmp_path / "snippet.py"
    script.write_text(snippet)
    if "ChatModel" in snippet:
        with ChatServer().running() as server, pytest.MonkeyPatch.context() as patch:
            patch.setenv("CHAT_BASE_URL", server.base_url)
            runpy.run_path(str(script), run_name="__main__")
        assert server.received, "the snippet did not ask the model"
        return
    if "LocalNatsServer" not in snippet:
        request.getfixturevalue("virtual_time")
    runpy.run_path(str(script), run_name="__main__")


# -- claims the code can check --------------------------------------------------------------------

#: The README's text with its line breaks and indentation folded into single spaces.
PROSE = " ".join(README.read_text().split())


def _section(title: str) -> str:
    """The README's section under the heading ``title`` (to the next heading of any level)."""
    text = README.read_text()
    start = text.index(f"## {title}\n")
    end = text.find("\n#", start + len(title) + 4)
    return " ".join(text[start:end].split())


def test_the_dead_letter_reasons_listed_are_the_enums() -> None:
    """Statistics and dead letters lists every ``DeadLetterReason``, and no other."""
    listed = re.search(r"\(`DeadLetterReason`: ([^;)]*)", PROSE)
    assert listed is not None
    named = {reason.strip() for reason in listed.group(1).split(",")}
    assert named == {reason.value for reason in DeadLetterReason}


def test_the_system_stats_fields_listed_are_the_classes() -> None:
    """Statistics and dead letters names every field of ``SystemStats``."""
    listed = re.search(r"`SystemStats` has (.*?)\.(?: |$)", PROSE)
    assert listed is not None
    named = set(re.findall(r"`(\w+)`", listed.group(1)))
    assert named == {field.name for field in attrs.fields(SystemStats)}


def test_every_books_equation_is_the_ledgers() -> None:
    """Each ``sent == ...`` the README states is the one ``DeliveryStats`` keeps by
    construction (``forwarded`` included: it is 0 only on a system outside a cluster)."""
    ledger = " ".join((DeliveryStats.__doc__ or "").split())
    [kept] = re.findall(r"``sent == ([^`]*)``", ledger)
    stated = re.findall(r"`sent == ([^`]*)`", PROSE)
    assert stated
    assert set(stated) == {kept}


def test_a_journaled_tuple_comes_back_as_the_readme_says() -> None:
    """Durable delivery says what a tuple payload is after the journal's codec."""
    said = re.search(r"a tuple comes back as an? (\w+)", PROSE)
    assert said is not None
    payload = decode(encode(cast(None, ("a", 1), recipient="keeper"))).payload
    assert said.group(1) == type(payload).__name__
    assert payload == ("a", 1)


def test_the_differences_from_otp_tell_of_the_cluster() -> None:
    """Distribution exists (``terraphim_actors.cluster``): the comparison with OTP says what
    there is, and links to it."""
    section = _section("Differences from Erlang/OTP")
    assert "no distribution" not in section
    assert "(#beyond-one-process-a-cluster-over-nats-jetstream)" in section
