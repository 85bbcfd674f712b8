"""Spec -> plan: the stage nodes, their keys (plan.py), and why a node must run (why.py)."""
