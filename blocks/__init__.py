"""kzoo blocks: reusable Keras layers, registered by spec type name.

Importing this package registers every block family; `blocks.registry` resolves types.
"""

from blocks.registry import block_types, get_block, register_block  # noqa: F401
from blocks import core, interaction  # noqa: F401  (registration side effect)
from blocks import distill, ranking  # noqa: F401
