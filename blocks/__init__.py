"""kzoo blocks: reusable Keras layers, registered by spec type name.

Importing this package registers every block family; `kzoo.blocks.registry` resolves types.
"""

from kzoo.blocks.registry import block_types, get_block, register_block  # noqa: F401
from kzoo.blocks import core, interaction  # noqa: F401  (registration side effect)
from kzoo.blocks import distill, ranking  # noqa: F401
from kzoo.blocks import multitask, ple  # noqa: F401
from kzoo.blocks import dien, sequence, sequence_input  # noqa: F401
from kzoo.blocks import inttower, mtmd  # noqa: F401
