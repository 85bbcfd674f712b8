"""Running a plan: in this process or a process pool (executor.py), or on a Ray cluster (ray.py)."""
