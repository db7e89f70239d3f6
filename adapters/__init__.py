"""Routed multi-LoRA layers, the router, projectors, PEFT import/export (installed as molora.adapters)."""
from .lora import RoutedLoRALinear, inject_routed_lora
from .route import Route

__all__ = ["RoutedLoRALinear", "Route", "inject_routed_lora"]
