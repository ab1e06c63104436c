"""The kopf operator: reconciles LoRAJobs into sized, queued, multi-node trainer Jobs."""
