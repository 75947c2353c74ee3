"""The capacity planner: how many dedicated GPUs to keep, with which policy, at what cost."""
