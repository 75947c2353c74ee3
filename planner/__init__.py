"""The capacity planner: how many dedicated GPUs to keep, with which policy, at what cost.

It replays a workload (:mod:`planner.workloads`: synthetic office hours or a
JSONL/CSV trace) through each routing policy (:mod:`planner.policies`, the
router's own decision functions among them) on a simulated GPU pool
(:mod:`planner.capacity`) for a range of GPU counts, prices each run and
compares it with a hindsight lower bound (:mod:`planner.bound`) in
:mod:`planner.simulate`; :mod:`planner.report` prints the table, the JSON and
the chart, and :mod:`planner.cli` is the ``simulate`` command.

From Python::

    from backends.catalog import get_catalog
    from planner.simulate import PlanConfig, plan
    from planner.workloads import SyntheticSpec, synthetic

    catalog = get_catalog()
    result = plan(synthetic(SyntheticSpec(peak_rps=25)), PlanConfig(gpus=(0, 1, 2, 4)), catalog)
    result.best, result.saving_usd, result.marginal
"""
