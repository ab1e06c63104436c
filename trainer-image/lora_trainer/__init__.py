"""The LoRA/QLoRA trainer that runs inside a LoRAJob's pods (see `main` and `launch`)."""
