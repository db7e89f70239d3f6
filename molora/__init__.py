"""molora: Mixture-of-LoRAs multimodal models in the style of Phi-4-multimodal."""
from .config import MoLoRAConfig
from .errors import MoLoRAError

__version__ = "0.2.0"


def __getattr__(name):  # heavy imports only when used
    if name == "MoLoRAModel":
        from .model import MoLoRAModel

        return MoLoRAModel
    if name == "MoLoRAProcessor":
        from .processor import MoLoRAProcessor

        return MoLoRAProcessor
    if name == "Chat":
        from .chat import Chat

        return Chat
    raise AttributeError(name)


__all__ = ["MoLoRAConfig", "MoLoRAModel", "MoLoRAProcessor", "Chat", "MoLoRAError", "__version__"]
