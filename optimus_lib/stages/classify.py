"""Stage 1: score every dialog's reply in its context, choose the threshold, flag.

The output is the input records, in input order, plus ``toxicity`` (the detector's
score, unrounded) and ``flagged`` (``toxicity >= threshold``). The threshold is one
explicit value: the one given, or the calibrated one; it is returned so the next stage
(heal) receives it as an input instead of reading it off a shared object.

To show robustness the detector can be weakened on purpose (``target_recall``, optionally
inside one ``weaken_category``): the "imperfect classifier" simulation of docs/method.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from optimus_lib.data.io import read_jsonl, read_samples, write_jsonl
from optimus_lib.data.schema import Sample
from optimus_lib.errors import OptimusError
from optimus_lib.progress import staged
from optimus_lib.settings import BUNDLED_MODEL, DetectorName, ModelSpec, Strict
from optimus_lib.stages import file_digest, obj_digest


class ClassifySettings(Strict):
    """Which detector flags dialogs, and at what threshold."""

    detector: DetectorName = Field(
        "auto",
        description="auto (llm-judge when 'model' is a judge other than the bundled one, "
        "else stack), stack, llm-judge, lexical, wordlist, hf-classifier, oracle; 'a+b' "
        "mean, 'max(a,b)' max ensemble",
    )
    model: ModelSpec = BUNDLED_MODEL  # judge model (llm-judge) or classifier (hf-classifier)
    threshold: float = Field(0.5, ge=0.0, le=1.0)
    # "fpr"/"f1" on labelled data ("devset" = the bundled dev set), "gmm": two-component
    # mixture over this dataset's own scores (no labels).
    calibrate: Literal["none", "fpr", "f1", "gmm"] = "none"
    calibration_data: str = "devset"
    target_fpr: float = Field(0.05, ge=0.0, le=1.0)
    target_recall: float | None = Field(None, gt=0.0, le=1.0)
    weaken_category: str | None = None
    # Reuse the ``toxicity`` the input records already carry (a scan of the same data by
    # the same detector) and only re-threshold / weaken: a recall sweep scans once.
    reuse_scores: bool = False
    batch_size: int = Field(16, ge=1)
    max_prompt_tokens: int = Field(512, ge=32)
    paraphrases: int = Field(1, ge=1, le=4)
    engine: Literal["auto", "transformers", "vllm"] = "auto"
    # float32 | bfloat16 | float16; auto: bfloat16 on a GPU, float32 on a CPU (transformers),
    # the checkpoint's own dtype (vLLM)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: str = "auto"
    trust_remote_code: bool = False


#: Quality keys of a scan whose data carries an evasion attack (DataSettings ``evasion``).
EVADED = ("recall_evaded", "recall_not_evaded", "n_evaded")


def evaded_recall(samples: list[Sample], scores: list[float], threshold: float) -> dict[str, float]:
    """Recall on the toxic replies an evasion attack rewrote (their record keeps the
    ``original_response``) and on the other toxic ones; ``{}`` when none was rewritten.
    The attack's success is the gap between the two."""
    toxic = [i for i, x in enumerate(samples) if x.label == 1]
    evaded = [i for i in toxic if samples[i].record.get("original_response") is not None]
    if not evaded:
        return {}
    plain = [i for i in toxic if i not in set(evaded)]

    def rate(idx: list[int]) -> float:
        return sum(scores[i] >= threshold for i in idx) / len(idx) if idx else float("nan")

    return {
        "recall_evaded": rate(evaded),
        "recall_not_evaded": rate(plain),
        "n_evaded": float(len(evaded)),
    }


@dataclass
class ClassifyResult:
    threshold: float
    n: int
    flagged: int
    detector: str = ""  # the detector that scored, ``auto`` resolved
    quality: dict[str, float] | None = None  # precision, recall, AUC... when labelled
    roc: dict[str, list[float]] | None = None
    calibration: dict[str, Any] | None = field(default=None)

    @property
    def confusion(self) -> list[list[int]] | None:
        """[[tn, fp], [fn, tp]] over the labelled records (rows: truth safe, toxic)."""
        q = self.quality
        return None if q is None else [[q["tn"], q["fp"]], [q["fn"], q["tp"]]]

    def as_metrics(self) -> dict[str, float]:
        out = {
            "n": float(self.n),
            "flagged": float(self.flagged),
            "flag_rate": self.flagged / self.n if self.n else 0.0,
            "threshold": self.threshold,
        }
        for k in ("precision", "recall", "f1", "fpr", "auc", *EVADED):
            v = None if self.quality is None else self.quality.get(k)
            if v is not None and v == v:  # not NaN
                out[k] = float(v)
        return out


def build_detector_for(settings: ClassifySettings, detector: str | None = None):
    """The one place detector options are assembled from settings."""
    from optimus_lib.detect.base import DetectorOptions, build_detector

    opts = DetectorOptions(
        model=settings.model,
        device=settings.device,
        engine=settings.engine,
        dtype=settings.dtype,
        batch_size=settings.batch_size,
        max_prompt_tokens=settings.max_prompt_tokens,
        paraphrases=settings.paraphrases,
        trust_remote_code=settings.trust_remote_code,
        threshold=settings.threshold,
    )
    return build_detector(detector or settings.detector, opts)


def score(settings: ClassifySettings, dialogs: Path, out: Path, start: int = 0):
    """The detector's score of every dialog (or the ``toxicity`` it carries, with
    ``reuse_scores``), in input order, with the detector that made them (None when
    reused). ``start``: the index of the first record in the whole dataset (a shard's
    offset), so records without an ``id`` keep the one they have unsharded."""
    s = settings
    samples = read_samples(dialogs, start=start)
    if s.reuse_scores:
        if s.calibrate not in ("none", "gmm"):
            raise OptimusError(
                "reuse_scores: calibrate with the scan that made the scores; "
                "pass its threshold instead"
            )
        return samples, _carried_scores(dialogs), None
    from optimus_lib.distributed import sharded_map

    detector = build_detector_for(s)
    key = obj_digest([file_digest(dialogs), s.model_dump()])[:16]
    return samples, sharded_map(samples, detector.score, Path(out), key), detector


@staged("classify")
def classify(settings: ClassifySettings, dialogs: Path, scored_out: Path) -> ClassifyResult:
    """Score, calibrate, weaken, flag; write ``scored_out``; return the threshold used."""
    samples, scores, detector = score(settings, dialogs, scored_out)
    return flag(settings, samples, scores, scored_out, detector)


@staged("classify")
def score_shard(settings: ClassifySettings, shard: Path, start: int, out: Path) -> int:
    """One shard of a sharded classify: its records plus ``toxicity``, nothing flagged.

    The threshold is one value for the whole dataset (calibrated on all of it, or
    weakened over all of its toxic records), so calibration, weakening and flagging
    wait for :func:`flag_shards`. Returns the number of records scored.
    """
    samples, scores, _ = score(settings, shard, out, start)
    from optimus_lib.distributed import is_main_process

    if is_main_process():
        write_jsonl(out, [{**x.record, "toxicity": float(v)} for x, v in zip(samples, scores)])
    return len(samples)


@staged("classify")
def flag_shards(settings: ClassifySettings, shards: list[Path], scored_out: Path) -> ClassifyResult:
    """The scored shards, in order, as one dataset: calibrate, weaken and flag them
    exactly as an unsharded classify would, and write ``scored_out``."""
    from optimus_lib.data.schema import parse_record

    records = [r for path in shards for r in read_jsonl(path)]
    if not records:
        raise OptimusError("classify: the scored shards hold no records")
    samples = [parse_record(r, i) for i, r in enumerate(records)]
    scores = _carried_scores_of(records, "scored shard")
    detector = None
    if settings.calibrate in ("fpr", "f1"):  # labelled calibration scores its own data
        detector = build_detector_for(settings)
    return flag(settings, samples, scores, scored_out, detector)


def flag(settings: ClassifySettings, samples, scores, scored_out: Path, detector) -> ClassifyResult:
    """Calibrate (on all of ``scores``), weaken, flag; write ``scored_out``."""
    from optimus_lib.detect.ensemble import weaken_scores
    from optimus_lib.detect.metrics import classification_metrics, roc_points

    s = settings
    threshold = s.threshold
    calibration = None
    if s.calibrate != "none":
        from optimus_lib.detect.calibrate import calibrate_detector

        cal = calibrate_detector(detector, s.calibrate, scores, s.calibration_data, s.target_fpr)
        threshold = cal.threshold
        calibration = {"method": cal.method, "threshold": cal.threshold, **cal.details}
    labels = [x.label for x in samples]
    if s.target_recall is not None:
        scores = weaken_scores(
            scores,
            labels,
            s.target_recall,
            threshold,
            [x.category for x in samples],
            s.weaken_category,
        )
    from optimus_lib.distributed import is_main_process

    flags = [x >= threshold for x in scores]
    if is_main_process():
        write_jsonl(
            scored_out,
            [
                {**x.record, "toxicity": float(v), "flagged": bool(f)}
                for x, v, f in zip(samples, scores, flags)
            ],
        )
    from optimus_lib.detect.base import resolved_name

    quality = classification_metrics(labels, scores, threshold)
    if quality is not None:
        quality.update(evaded_recall(samples, scores, threshold))
    return ClassifyResult(
        threshold=float(threshold),
        n=len(samples),
        flagged=sum(flags),
        detector=resolved_name(s.detector, s.model),
        quality=quality,
        roc=roc_points(labels, scores),
        calibration=calibration,
    )


def log_result(
    result: ClassifyResult, metrics: Any, classification: Any, upstream: dict[str, Any]
) -> dict[str, Any]:
    """Log a result on KFP's metrics artifacts (anything with ``log_metric``,
    ``log_roc_curve`` and ``log_confusion_matrix``); returns the scored output's metadata
    (``upstream``: the input's, whose seed and source carry over)."""
    summary = result.as_metrics()
    for key, value in summary.items():
        metrics.log_metric(key, value)
    if result.roc is not None:
        roc = result.roc
        classification.log_roc_curve(roc["fpr"], roc["tpr"], roc["thresholds"])
    if result.confusion is not None:
        classification.log_confusion_matrix(["safe", "toxic"], result.confusion)
    quality = ("threshold", "precision", "recall", "f1", "fpr", "auc")
    return {
        "rows": result.n,
        "flagged": result.flagged,
        "detector": {"name": result.detector, **{k: summary[k] for k in quality if k in summary}},
        # the data's seed, when its producer recorded one (experiment fan-in)
        **{k: upstream[k] for k in ("seed", "source") if k in upstream},
    }


def _carried_scores(path: Path) -> list[float]:
    return _carried_scores_of(read_jsonl(path), str(path), "reuse_scores needs")


def _carried_scores_of(records: list[dict], where: str, what: str = "no") -> list[float]:
    out = []
    for i, r in enumerate(records, start=1):
        v = r.get("toxicity")
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            raise OptimusError(f"{where}:{i}: {what} numeric 'toxicity' field")
        out.append(float(v))
    return out
