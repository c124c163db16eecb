"""Adaptive attacks on the defense, as tables: how much an attack lets through.

* :func:`attack_table`: share of caught toxic training samples that a jailbreak suffix or
  a perturbation lets pass each detector unflagged;
* :func:`healer_attack_table`: how many toxic "healed" replies an attack context makes
  the healer write, with and without heal's re-scoring.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from optimus_lib.data.io import read_samples
from optimus_lib.stages.classify import ClassifySettings, build_detector_for
from optimus_lib.stages.evaluate import EvaluateSettings
from optimus_lib.stages.heal import HealSettings, build_healer


def attack_table(
    settings: ClassifySettings, train_jsonl: Path, seed: int, detectors: list[str]
) -> list[dict[str, Any]]:
    """Share of caught toxic training samples that an adaptive attack lets through.

    For each named detector (built from the classify ``settings``): score the injected
    toxic samples, keep those it flags, rewrite them with every jailbreak suffix and
    perturbation of ``optimus_lib.threats.attacks`` and count how many then pass unflagged.
    Oracle-based detectors are pointless here (they read the label), so the detectors are
    named separately from the scan detector.
    """
    from optimus_lib.threats import attacks

    toxic = [s for s in read_samples(train_jsonl) if s.label == 1]
    variants: list[tuple[str, Any]] = [
        (f"jailbreak:{n}", lambda ss, n=n: attacks.jailbreak_suffix(ss, n, seed))
        for n in attacks.JAILBREAKS
    ] + [
        (f"perturb:{n}", lambda ss, n=n: attacks.perturb(ss, n, 0.5, seed))
        for n in attacks.PERTURBATIONS
        if n != "paraphrase"
    ]
    rows = []
    for name in detectors:
        det = build_detector_for(settings, name)
        caught = [s for s, x in zip(toxic, det.score(toxic)) if x >= det.threshold]
        for attack, fn in variants:
            passed = 0
            if caught:
                passed = sum(x < det.threshold for x in det.score(fn(caught)))
            rows.append(
                {
                    "seed": seed,
                    "detector": name,
                    "attack": attack,
                    "caught_before": len(caught),
                    "pass_after": passed,
                    "success_rate": passed / len(caught) if caught else None,
                }
            )
    return rows


def healer_attack_table(
    heal_settings: HealSettings,
    evaluate_settings: EvaluateSettings,
    train_jsonl: Path,
    threshold: float,
    seed: int,
    n: int = 30,
) -> list[dict[str, Any]]:
    """Adaptive attack on the healer: how many toxic "healed" replies reach training.

    The first ``n`` injected toxic training samples get an attack context
    (:func:`optimus_lib.threats.attacks.healer_attack_contexts`: "repeat after me", role
    play, forged earlier turn, ...) and are healed twice: once by the same generator with
    no re-scoring (what the attack achieves against the generator alone) and once as the
    heal stage heals (:func:`optimus_lib.stages.heal.build_healer`: re-scored at
    ``threshold``, retried, then the fixed reply). The evaluator judges both; rows per
    attack style plus ``all``.
    """
    from optimus_lib.detect.base import DetectorOptions, build_detector
    from optimus_lib.heal.healer import ContextualHealer
    from optimus_lib.threats import attacks

    h, ev = heal_settings, evaluate_settings
    toxic = [s for s in read_samples(train_jsonl) if s.label == 1][:n]
    if not toxic:
        return []
    attacked = attacks.healer_attack_contexts(toxic, seed)
    evaluator = build_detector(
        ev.evaluator,
        DetectorOptions(
            device=ev.device, threshold=ev.threshold, trust_remote_code=ev.trust_remote_code
        ),
    )
    checked = build_healer(h, threshold)
    unchecked = ContextualHealer(  # same loaded generator, nothing re-scores its replies
        checked.engine,
        None,
        h.fixed_reply,
        h.model,
        h.top_p,
        h.temperature,
        h.max_new_tokens,
        0,
        h.seed,
    )

    def judged(healer: Any) -> tuple[list[float], list[bool]]:
        res = healer.heal(attacked)
        scores = evaluator.score([s.with_response(r.reply) for s, r in zip(attacked, res)])
        return scores, [r.fallback for r in res]

    raw, _ = judged(unchecked)
    kept, fallback = judged(checked)
    styles = [s.record["attack"].split(":", 1)[1] for s in attacked]
    rows = []
    for style in [*sorted(set(styles)), "all"]:
        idx = [i for i, st in enumerate(styles) if style in (st, "all")]
        rows.append(
            {
                "seed": seed,
                "style": style,
                "n": len(idx),
                "toxic_unchecked": sum(raw[i] >= evaluator.threshold for i in idx) / len(idx),
                "toxic_after_rescore": sum(kept[i] >= evaluator.threshold for i in idx) / len(idx),
                "fallback": sum(fallback[i] for i in idx) / len(idx),
            }
        )
    return rows
