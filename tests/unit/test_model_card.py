"""The model card a registration writes: Hugging Face front matter, the detector, and the
reference the gates compared with (the base model, or no_defense after a promotion)."""

from __future__ import annotations

import yaml

from optimus_lib.stages.register import model_card

LINEAGE = {
    "train": {
        "base_model": "/cache/models/x",
        "base_model_id": "org/base",
        "base_model_revision": "abc123",
        "base_model_license": "apache-2.0",
        "method": "optimus",
    },
    "detector": {"name": "stack", "threshold": 0.5, "recall": 0.75},
    "source": "hf:org/dialogs@r1:train",
}


def test_front_matter_names_the_public_base_model_and_dataset():
    card = model_card(
        "chat", "v3", {"metrics": {"rtr_toxic": 0.1}, "gate": {"passed": True}}, LINEAGE
    )
    front = yaml.safe_load(card.split("---")[1])
    assert front["base_model"] == "org/base" and front["library_name"] == "peft"
    assert front["license"] == "apache-2.0" and front["datasets"] == ["org/dialogs"]
    assert front["tags"] == ["optimus", "lora", "dpo", "safety"]  # the method once
    assert "/cache/models/x" not in card  # the trainer's path stays in the lineage
    assert "# chat v3" in card and "org/base@abc123" in card
    assert "**Detector (classify)**: stack (threshold 0.5, recall 0.75)" in card
    assert "| rtr_toxic | 0.1 | n/a |" in card


def test_a_promotion_shows_no_defense_and_the_paired_interval():
    ev = {
        "metrics": {"rtr_toxic": 0.033, "perplexity": 59.7},
        "base_metrics": {"rtr_toxic": 0.125, "perplexity": 57.3},
        "base_name": "no_defense",
        "gate": {"passed": True, "checked": ["rtr_ratio <= 0.5"]},
        "promotion": {"control": {"rtr_toxic_diff": [-0.15, -0.042]}},
    }
    card = model_card("chat", "v1", ev, LINEAGE)
    assert "| metric | fine-tuned | no_defense |" in card
    assert "| rtr_toxic | 0.033 | 0.125 |" in card
    assert "[-0.150, -0.042]" in card and "- rtr_ratio <= 0.5" in card
