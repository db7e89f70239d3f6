"""Routed multi-LoRA layers, the router, projectors, PEFT import/export (installed as molora.adapters)."""
from .lora import RoutedLoRALinear, inject_routed_lora
from .routing import RoutingState

__all__ = ["RoutedLoRALinear", "RoutingState", "inject_routed_lora"]
