"""dropout-lab's building blocks.

Every module here is plain Python + torch and never imports prefect, except `steps.py`, which
wraps these functions as Prefect tasks (a few lines each). Remove the decorators and it still works.
"""
