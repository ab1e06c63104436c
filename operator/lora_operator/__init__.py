"""lora-operator: LoRA/QLoRA fine-tuning jobs on Kubernetes, sized by a GPU memory model."""

__version__ = "0.1.0"
