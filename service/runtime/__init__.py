"""The runtime layer shared by training and the HTTP service: model directories, architectures, backends,
explanations and the filter store. Nothing in here imports FastAPI, settings or metrics."""
