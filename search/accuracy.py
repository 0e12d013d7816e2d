"""Dev-set accuracy of a policy through lm-eval, for the `dev_error` qualities of the search.

`DevAccuracy(model_ref, tasks)` builds one `utrc` lm-eval model (`utrc.lm_eval.model.UtrcLM`,
which loads the model once) and, per call, points it at the trial's policy and runs
`lm_eval.simple_evaluate` on the tasks (the demo tasks' dev split by default: items that share no
document with the test items). The result is the mean over tasks of each task's paper metric
(`utrc.names.PAPER_METRICS`: acc or acc_norm), as `utrc.evaluation` averages. The loaded
model is exposed as `.model`, so the KL objective can share it instead of loading a second copy.
"""

from __future__ import annotations

import statistics

from utrc import Policy


class DevAccuracy:
    """`accuracy(policy) -> float`: mean accuracy on dev tasks with one model loaded once.

    model_ref     a utrc model reference (e.g. "demo:mamba2")
    tasks         "demo" (the six demo tasks) or comma-separated lm-eval task names
    task_manager  an lm-eval TaskManager; default for demo tasks: utrc.demo.task_manager(split="dev")
    limit         items per task (None: all)
    """

    def __init__(self, model_ref: str, tasks: str = "demo", task_manager=None, limit: int | None = None,
                 batch_size: int = 16, device: str = "cpu", dtype=None, max_length: int | None = None):
        from utrc.evaluation import TASK_SETS
        from utrc.lm_eval.model import DEFAULT_MAX_LENGTH, UtrcLM
        from utrc.names import PAPER_METRICS

        self.tasks = list(TASK_SETS[tasks]) if tasks in TASK_SETS else [t for t in tasks.split(",") if t]
        if task_manager is None:
            if not all(t.startswith("demo_") for t in self.tasks):
                raise ValueError(f"dev tasks {self.tasks}: give a task manager for non-demo tasks")
            from utrc import demo

            task_manager = demo.task_manager(split="dev")
        unknown = [t for t in self.tasks if t not in task_manager.all_tasks]
        if unknown:
            raise ValueError(f"dev tasks {unknown} are unknown to the task manager")
        missing = [t for t in self.tasks if t not in PAPER_METRICS]
        if missing:
            raise ValueError(f"dev tasks {missing} have no accuracy metric in utrc.names.PAPER_METRICS")
        self.metrics = {t: PAPER_METRICS[t] for t in self.tasks}
        self.task_manager = task_manager
        self.limit = limit
        self.lm = UtrcLM(pretrained=model_ref, policy="dense", device=device, dtype=dtype, batch_size=batch_size,
                         max_length=max_length or DEFAULT_MAX_LENGTH)
        self.model = self.lm.model

    def __call__(self, policy: Policy) -> float:
        return self.evaluate(policy)["average"]

    def evaluate(self, policy: Policy) -> dict:
        """{"average": mean accuracy, "tasks": {task: accuracy}} of `policy` on the dev tasks."""
        import lm_eval

        self.lm.set_policy(policy)
        results = lm_eval.simple_evaluate(
            model=self.lm, tasks=self.tasks, task_manager=self.task_manager, limit=self.limit, bootstrap_iters=0,
            log_samples=False, verbosity="ERROR",
        )
        scores = {t: float(results["results"][t][f"{m},none"]) for t, m in self.metrics.items()}
        return {"average": statistics.fmean(scores.values()), "tasks": scores}
