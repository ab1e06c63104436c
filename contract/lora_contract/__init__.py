"""The contract between the lora-operator and its trainer: the LoRAJob API types, the run layout
in the bucket, S3 storage, readable validation errors, and the pod contract (`pod`: env names,
mount paths, exit codes). It imports neither side."""
