"""KFP component: the training dialogs and the held-out evaluation sets."""

from kfp import dsl
from kfp.dsl import Dataset, Metrics, Output

from components.images import IMAGES


@dsl.component(base_image=IMAGES["light"], packages_to_install=[], install_kfp_package=False)
def prepare_data(
    train: Output[Dataset],
    eval_toxic: Output[Dataset],
    eval_benign: Output[Dataset],
    metrics: Output[Metrics],
    settings: dict = {},  # noqa: B006 - KFP needs a literal default
    seed: int = -1,
):
    """Writes the training dialogs and the toxic / benign evaluation sets as JSONL.

    The training set is the user's JSONL (a local path or ``gs://`` URI, validated line by
    line) or, when ``settings.train_uri`` is empty, the bundled poisoned benchmark: chit-chat
    dialogs with confirmed-toxic replies injected, ground truth kept in ``label``. The
    evaluation sets are the bundled held-out ones unless ``settings`` names others.

    Args:
        train: The training dialogs (JSONL, one dialog per line).
        eval_toxic: Held-out toxic contexts (JSONL).
        eval_benign: Held-out benign dialogs (JSONL).
        metrics: Counts: n_train, n_toxic (when labelled), n_eval_toxic, n_eval_benign.
        settings: ``DataSettings`` (train_uri: a path, ``gs://`` or ``hf:NAME``, empty for
            the bundled benchmark; seed, n_train, toxic_fraction, n_eval_toxic,
            n_eval_benign, threat, eval_toxic_uri, ...), resolved by the client; a bad
            value fails the task with one line naming the field.
        seed: Set by a loop over seeds (the experiment); -1: ``settings.seed``.
    """
    from pathlib import Path

    from optimus_lib.settings import load_settings, loop_values
    from optimus_lib.stages import one_line_errors
    from optimus_lib.stages.data import DataSettings
    from optimus_lib.stages.data import prepare_data as run_stage

    with one_line_errors():
        s = load_settings(DataSettings, settings, **loop_values(seed=seed))
        result = run_stage(s, Path(train.path), Path(eval_toxic.path), Path(eval_benign.path))
    for key, value in result.as_metrics().items():
        metrics.log_metric(key, value)
    # the seed travels with the data, so a fan-in over seeds can tell its inputs apart
    train.metadata.update(
        {"source": s.train_uri or "bundled", "rows": result.n_train, "seed": s.seed}
    )
    eval_toxic.metadata.update({"rows": result.n_eval_toxic, "seed": s.seed})
    eval_benign.metadata.update({"rows": result.n_eval_benign, "seed": s.seed})
