"""The Translator's saved layouts: reading a `.keras` file of the first one.

A first-layout file was written while the Translator *was* its Transformer,
before it held one as `backbone`; `upgrade_first_layout` says how
`keras_transformer.models.load_model` reads one (through
`Translator.upgrade_keras_file`): the config with its network fields as a
backbone, and the weight groups to move.
"""

import keras

from keras_transformer.models.transformer import Transformer

# The fields of a first-layout Translator config that described its network
# (the Transformer's own config fields, `Transformer.get_config`).
BACKBONE_FIELDS = ("config", "dtype", "transformer_layers")
# Where the weights of a first-layout `.keras` file (written while the
# Translator *was* its Transformer, before it held one as `backbone`) lie in
# `model.weights.h5`, and where the composed Translator keeps them: Keras
# names weights by the attributes that hold them, so the network's layers
# moved under "backbone/" and the adapter bank, a Translator layer now
# listed with the backbone in `Translator.layers`, under "layers/". Moved in
# this order (the second move reuses the name the first freed).
FIRST_LAYOUT_MOVES = (
    ("layers", "backbone/layers"),
    ("_adapter_bank", "layers/adapter_bank"),
)


def upgrade_first_layout(config):
    """`Translator.upgrade_keras_file`: None for a config of the current
    layout, else `(config, FIRST_LAYOUT_MOVES)` with the network's fields of
    `config` as a `backbone`."""
    if "backbone" in config:
        return None
    backbone = {"name": "transformer", "trainable": True}
    backbone.update(
        (field, config[field]) for field in BACKBONE_FIELDS if field in config
    )
    upgraded = {
        key: value for key, value in config.items() if key not in BACKBONE_FIELDS
    }
    upgraded["backbone"] = {
        "module": Transformer.__module__,
        "class_name": Transformer.__name__,
        "config": backbone,
        "registered_name": keras.saving.get_registered_name(Transformer),
    }
    return upgraded, FIRST_LAYOUT_MOVES
