"""Local stand-ins for a cluster: Kubernetes emulator, S3 server, pod executor, tiny models."""
