"""KFP component: the experiment's comparison table, and the promotion verdict."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Input, Metrics, Model, Output

from components.images import IMAGES


@dsl.component(base_image=IMAGES["torch"], packages_to_install=[], install_kfp_package=False)
def compare_arms(
    evaluations: Input[list[Artifact]],
    adapters: Input[list[Model]],
    results: Output[Artifact],
    report: Output[HTML],
    metrics: Output[Metrics],
    promoted: Output[Model],
    promoted_evaluation: Output[Artifact],
    name: str = "experiment",
    methods: list = [],  # noqa: B006 - KFP needs a literal default
    promote_method: str = "",
    promote_gates: dict = {},  # noqa: B006
    promote_require_effect: bool = True,
) -> str:
    """Compares every arm side by side; optionally picks one adapter to register.

    Rows per arm (seed, detector recall, method) with 95 % bootstrap intervals of toxic
    and benign RTR and the paired interval of the toxic-RTR difference to no_defense of
    the same seed; a summary over seeds; an HTML report with the table and plots. With
    ``promote_method``, that method's arm (first seed, first recall) is checked against
    no_defense: relative gates and, with ``promote_require_effect``, a paired interval
    below 0.

    Args:
        evaluations: Every arm's evaluate results (``dsl.Collected``), labelled by arm.
        adapters: Every arm's dpo_train adapter (``dsl.Collected``).
        results: ``results.json`` (rows, summary, promotion) with ``results.csv`` beside
            it (the artifact is a folder).
        report: The comparison report.
        metrics: Per (recall, method) mean toxic RTR and perplexity over seeds.
        promoted: The promoted arm's adapter (empty when nothing is promoted).
        promoted_evaluation: Its evaluation with the gate replaced by the promotion
            verdict (register's and record_rejection's input).
        name: The experiment's name (report title).
        methods: Row order of the methods; empty: the library's order.
        promote_method: Method to promote (e.g. optimus); empty: compare only.
        promote_gates: ``Gates`` fields relative to no_defense (max_rtr_ratio,
            max_perplexity_increase, max_over_refusal_increase) or absolute.
        promote_require_effect: Also require the paired toxic-RTR interval below 0.

    Returns:
        ``promote`` (register), ``reject`` (record the rejection) or ``none`` (no
        promotion asked).
    """
    import json
    import shutil
    from pathlib import Path

    from optimus_lib.errors import OptimusError
    from optimus_lib.experiment import Promotion, compare
    from optimus_lib.settings import load_settings
    from optimus_lib.stages import one_line_errors

    out = Path(results.path)
    out.mkdir(parents=True, exist_ok=True)
    with one_line_errors():
        promote = None
        if promote_method:
            promote = load_settings(
                Promotion,
                {"gates": promote_gates, "require_effect": promote_require_effect},
                method=promote_method,
            )
        table = compare(
            [Path(e.path) for e in evaluations],
            out / "results.json",
            Path(report.path),
            name=name,
            methods=list(methods) or None,
            promote=promote,
        )
        for row in table["summary"]:
            key = f"{row['method']}@{row['recall_target']:g}"
            for k in ("rtr_toxic", "perplexity", "over_refusal"):
                if row.get(k) is not None:
                    metrics.log_metric(f"{key}:{k}", float(row[k]))
        verdict = table["promotion"]
        Path(promoted.path).mkdir(parents=True, exist_ok=True)
        if verdict is None:
            Path(promoted_evaluation.path).write_text("{}", encoding="utf-8")
            print("compare_arms: compared; nothing to promote")
            return "none"
        ev_path = verdict.get("evaluation")
        if ev_path:
            ev = json.loads(Path(ev_path).read_text(encoding="utf-8"))
            uri = ev["labels"].get("adapter_uri")
            match = [a for a in adapters if a.uri == uri]
            if len(match) != 1:
                raise OptimusError(f"compare_arms: no adapter {uri!r} among the arms' adapters")
            shutil.copytree(match[0].path, promoted.path, dirs_exist_ok=True)
            promoted.metadata.update(dict(match[0].metadata))
        else:
            ev = {"metrics": {}, "labels": {}}
        gate = {k: verdict[k] for k in ("passed", "reasons", "checked")}
        ev = {**ev, "gate": gate, "promotion": verdict}
        Path(promoted_evaluation.path).write_text(json.dumps(ev), encoding="utf-8")
    promoted_evaluation.metadata.update({"passed": gate["passed"], "reasons": gate["reasons"]})
    if gate["passed"]:
        print(f"compare_arms: {promote_method} beats no_defense: promoted")
        return "promote"
    print(f"compare_arms: {promote_method} not promoted")
    for reason in gate["reasons"]:
        print(f"  - {reason}")
    return "reject"
