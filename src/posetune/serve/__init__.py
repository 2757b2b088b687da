"""The web service for a trained run: ``posetune serve RUN`` (FastAPI app in ``posetune.serve.app``)."""
