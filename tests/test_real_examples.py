"""Trigger examples read right: a stated random choice per group, no always-on latents, whitespace made visible."""

from __future__ import annotations

import numpy as np
import torch

from real.triggers import context_snippet, pick_examples, visible_token


def test_examples_are_a_random_sample_without_always_on_latents():
    rng = np.random.default_rng(0)
    m = 400
    stab = rng.choice([0.05, 0.5, 0.95], size=m)
    freq = rng.uniform(1e-3, 0.05, m)
    top = int(np.nonzero(stab >= 0.8)[0][0])
    freq[top] = 1.0  # the always-on latent: the most frequent stable one
    picks = pick_examples(stab, freq, (0.8, 0.2), n=4)
    assert top not in picks["stable"] and len(picks["stable"]) == 4 and len(picks["unstable"]) == 4
    assert all(stab[i] >= 0.8 for i in picks["stable"]) and all(stab[i] <= 0.2 for i in picks["unstable"])
    # not the most frequent of the group: a random draw, the same on every call
    live = np.nonzero((stab >= 0.8) & (freq < 0.99))[0]
    most = set(live[np.argsort(-freq[live])][:4].tolist())
    assert set(picks["stable"].tolist()) != most
    assert np.array_equal(pick_examples(stab, freq, (0.8, 0.2), n=4)["stable"], picks["stable"])


def test_whitespace_tokens_print_visibly():
    assert visible_token(" ") == "␣" and visible_token("\n") == "⏎" and visible_token("\n\n") == "⏎⏎"
    assert visible_token("\t") == "⇥" and visible_token(" the") == " the" and visible_token("") == "∅"

    class Tok:
        vocab = {0: "a", 1: " ", 2: "b", 3: "\n"}

        def decode(self, ids):
            return "".join(self.vocab[i] for i in ids)

    w = torch.tensor([0, 1, 2, 3, 0])
    assert context_snippet(Tok(), w, 1) == "a[[␣]]b⏎a"
    assert context_snippet(Tok(), w, 3) == "a b[[⏎]]a"
    assert "[[ ]]" not in context_snippet(Tok(), w, 1)


def test_identical_contexts_are_said_to_be_shared():
    from real.triggers import same_contexts_note

    seen: dict = {}
    assert same_contexts_note(seen, (3, 7, 9), "stable latent 5") == ""
    note = same_contexts_note(seen, (3, 7, 9), "unstable latent 12")
    assert "same 3 strongest contexts as stable latent 5" in note
    assert same_contexts_note(seen, (4, 7, 9), "unstable latent 13") == ""
