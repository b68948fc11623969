"""What the trained models say: statistics, the report, the run history and its trend, MLflow."""
