"""What `help()` shows a bot author: public signatures without internals, a short testing kit."""

from __future__ import annotations

import pydoc

import callflow
import callflow.testing


def test_help_of_call_shows_no_internal_constructor_parameters() -> None:
    text = pydoc.render_doc(callflow.Call, renderer=pydoc.plaintext)
    head = text.split("Methods defined here")[0]
    for internal in ("control:", "port:", "IoPort", "CallControl"):
        assert internal not in head
    assert "_open" not in text
    assert "ctx.call" in head  # says where handles come from


def test_help_of_the_testing_kit_leads_with_what_a_bot_author_needs() -> None:
    assert callflow.testing.__all__[0] == "FakeGraph"
    doc = callflow.testing.__doc__ or ""
    first = doc[: doc.index("::")]
    for needed in ("FakeGraph", "fake_graph", "serve_bot", "strict mode", "GraphRequest"):
        assert needed in first
    text = pydoc.render_doc(callflow.testing, renderer=pydoc.plaintext)
    assert "class KeyServer" not in text and "class TokenServer" not in text
    # still importable where tests of webhooks use them
    from callflow.testing import KeyServer, TokenServer, incoming_call

    assert KeyServer and TokenServer and incoming_call
