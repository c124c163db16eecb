"""The stored alt-profanity-check scores of the bundled RTP lines (prepare_data reads them
in the light image, which has no scikit-learn) are the scores the classifier gives today."""

import pytest

from optimus_lib.threats import poison


def test_stored_scores_match_the_classifier():
    pytest.importorskip("profanity_check")
    from optimus_lib.detect.lexical import profanity_probs

    texts = [t for _, t in poison._rtp_pairs()]
    stored = poison.stored_rtp_scores(texts)
    assert stored is not None, "stale: run write_rtp_scores() (see optimus_lib/threats/poison.py)"
    fresh = profanity_probs(texts)
    assert stored == pytest.approx(fresh, abs=1e-12)


def test_other_lines_are_scored_afresh(monkeypatch):
    texts = [t for _, t in poison._rtp_pairs()]
    assert poison.stored_rtp_scores(texts[:-1]) is None
    assert poison.stored_rtp_scores([*texts[:-1], texts[-1] + "!"]) is None


def test_toxic_texts_same_with_and_without_the_store(monkeypatch, tmp_path):
    pytest.importorskip("profanity_check")
    poison.toxic_texts.cache_clear()
    with_store = poison.toxic_texts()
    monkeypatch.setattr(poison, "RTP_SCORES", tmp_path / "missing.json")
    poison.toxic_texts.cache_clear()
    try:
        assert poison.toxic_texts() == with_store and len(with_store) > 100
    finally:
        poison.toxic_texts.cache_clear()
