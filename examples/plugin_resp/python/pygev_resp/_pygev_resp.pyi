from typing_extensions import CapsuleType

def capsule(max_command_size: int = 67108864) -> CapsuleType:
    """The "pygev.protocol" capsule of the RESP2 framing."""
