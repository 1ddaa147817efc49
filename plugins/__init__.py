"""servekit's adapters: one package per host library (MLflow, LangChain, Prefect, OpenTelemetry)."""
