"""Routed multi-LoRA layers, the router, projectors, PEFT import/export (installed as molora.adapters)."""
from .lora import RoutedLoRALinear, inject_routed_lora
from .route import TokenRoute

__all__ = ["RoutedLoRALinear", "TokenRoute", "inject_routed_lora"]
