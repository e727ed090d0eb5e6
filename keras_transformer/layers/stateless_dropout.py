"""Dropout whose mask is a pure function of a seed tensor.

A recomputed (rematerialised) block runs its forward pass twice: once to
produce its output and again in the backward pass. A `keras.layers.Dropout`
draws a fresh mask from its `SeedGenerator` on every call, so the
recomputation would differentiate a different function than the one that
produced the loss. Drawing the seed once, outside the recomputed region, and
dropping with that fixed seed inside it makes both runs use one mask.
"""

import keras

from keras_transformer.layers.dropout import dropout


class _FixedSeed(keras.random.SeedGenerator):
    """A seed tensor presented as a `SeedGenerator`.

    `keras.random` ops take an int or a `SeedGenerator` as `seed`, never a
    tensor; this object answers `next()` with the same tensor every time.
    """

    def __init__(self, seed):
        # No super().__init__(): that would create a state variable, and a
        # fixed seed has no state.
        self._seed = seed

    def next(self, ordered=True):
        return self._seed


def draw_dropout_seed(dropout_layer, training):
    """The seed `dropout_layer(x, training=training)` would draw now.

    Advances the layer's `SeedGenerator` exactly as its call would, so a
    block that drops with these seeds draws the masks it would have drawn
    without them.

    Args:
        dropout_layer: `Dropout` of this library.
        training: bool. Whether the dropout would be active.

    Returns:
        An int seed tensor of shape `(2,)`, or `None` when the layer would not
        drop anything (not training, or rate 0).
    """
    if not (training and dropout_layer.rate > 0):
        return None
    return dropout_layer.seed_generator.next()


def seeded_dropout(dropout_layer, inputs, training=None, seed=None):
    """`dropout_layer(inputs, training=training)`, with its mask drawn from `seed`.

    With `seed=None` this is the layer's own call. With a seed from
    `draw_dropout_seed` the mask is a pure function of that tensor: equal to
    the mask the layer would have drawn, and the same on every call.

    Args:
        dropout_layer: `Dropout` of this library. Supplies rate and noise
            shape.
        inputs: float tensor.
        training: bool. Whether dropout is active.
        seed: optional int tensor of shape `(2,)`.

    Returns:
        A tensor of the shape and dtype of `inputs`.
    """
    if seed is None or not training:
        return dropout_layer(inputs, training=training)
    return dropout(
        inputs,
        dropout_layer.rate,
        noise_shape=dropout_layer.noise_shape,
        seed=_FixedSeed(seed),
    )
