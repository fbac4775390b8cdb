"""The operations every front end calls: one function per behaviour, each taking a Service."""
