"""Search spaces, the Ray Tune trainable, MLflow tracking, and the run/finalize commands."""
