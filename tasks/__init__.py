"""The Prefect layer under the flow: one task per DAG node (fetch, train, report), each a few lines around
a plain function of dropout_lab, with what Prefect needs around them: cache keys and the safe result
storage (cache.py), device slots as global concurrency limits (slots.py), the run history and MLflow after
the report (record.py), and the check for a later scheduled run that is also due (late_runs.py).
"""
