"""Residual connection around any layer, with a choice of normalisation placement.

Also holds the DeepNet (DeepNorm) constants and initializer, and the helpers
a stack of blocks needs to add its final normalisation.
"""

import keras
from keras import ops

from keras_transformer import validation
from keras_transformer.layers.dropout import Dropout
from keras_transformer.layers.stateless_dropout import seeded_dropout

NORM_PLACEMENTS = ("post", "pre", "sandwich", "deepnorm", "rezero")
NORM_TYPES = ("layer_norm", "rms_norm")
# Placements whose residual stream is never normalised inside the block.
_UNNORMALISED_STREAM = ("pre", "sandwich")


def make_normalization(norm_type, epsilon=1e-5, name=None, dtype=None):
    """Returns the Keras normalisation layer named by `norm_type`.

    Both choices compute their statistics in float32 under mixed precision.

    Args:
        norm_type: str. `"layer_norm"` (`keras.layers.LayerNormalization`)
            or `"rms_norm"` (`keras.layers.RMSNormalization`).
        epsilon: float. Added to the variance for numerical stability.
        name: str. Name of the layer.
        dtype: dtype or `keras.DTypePolicy` of the layer.

    Returns:
        An unbuilt normalisation layer over the last axis.

    Example:

    ```python
    norm = keras_transformer.layers.make_normalization("rms_norm", 1e-6, "norm")
    ```
    """
    validation.check_choice("norm_type", norm_type, NORM_TYPES)
    epsilon = validation.check_positive_float("epsilon", epsilon)
    norm_class = (
        keras.layers.LayerNormalization
        if norm_type == "layer_norm"
        else keras.layers.RMSNormalization
    )
    return norm_class(epsilon=epsilon, name=name, dtype=dtype)


def needs_final_norm(norm_placement):
    """Whether a stack of `Residual` blocks needs a final normalisation.

    With `"pre"` and `"sandwich"` placements the residual stream itself is
    never normalised, so the output of the last block is unnormalised and a
    stack should end with its own norm. The other placements end every block
    with a norm (`"post"`, `"deepnorm"`) or use none at all (`"rezero"`).

    Args:
        norm_placement: str. One of `"post"`, `"pre"`, `"sandwich"`,
            `"deepnorm"`, `"rezero"`.

    Returns:
        bool.

    Example:

    ```python
    keras_transformer.layers.needs_final_norm("pre")  # True
    ```
    """
    validation.check_choice("norm_placement", norm_placement, NORM_PLACEMENTS)
    return norm_placement in _UNNORMALISED_STREAM


def deepnorm_constants(num_encoder_layers, num_decoder_layers):
    """DeepNet's residual scale `alpha` and initialisation gain `beta`.

    DeepNorm computes `norm(alpha * x + f(x))` and scales the value,
    output-projection and feed-forward kernels by `beta` at initialisation
    (see `deepnorm_initializer`). With `N` encoder and `M` decoder layers:

    - encoder-decoder: encoder `alpha = 0.81 (N^4 M)^(1/16)`,
      `beta = 0.87 (N^4 M)^(-1/16)`; decoder `alpha = (3M)^(1/4)`,
      `beta = (12M)^(-1/4)`.
    - encoder only (`M = 0`): `alpha = (2N)^(1/4)`, `beta = (8N)^(-1/4)`.
    - decoder only (`N = 0`): `alpha = (2M)^(1/4)`, `beta = (8M)^(-1/4)`.

    The encoder `beta` uses the paper's 0.87; torchscale divides by 1.15
    instead (a factor of 0.8696), the same constant rounded differently.

    Args:
        num_encoder_layers: int. `N`, zero for a decoder-only model.
        num_decoder_layers: int. `M`, zero for an encoder-only model.

    Returns:
        A dict with keys `"encoder_alpha"`, `"encoder_beta"`,
        `"decoder_alpha"`, `"decoder_beta"`; the entries of a side with no
        layers are `None`.

    Example:

    ```python
    constants = keras_transformer.layers.deepnorm_constants(12, 0)
    constants["encoder_alpha"]  # (24) ** 0.25 = 2.213...
    ```

    References:
        - [Wang et al., 2022](https://arxiv.org/abs/2203.00555)
    """
    n = validation.check_non_negative_int("num_encoder_layers", num_encoder_layers)
    m = validation.check_non_negative_int("num_decoder_layers", num_decoder_layers)
    if n == 0 and m == 0:
        raise ValueError(
            "deepnorm_constants needs at least one layer, but received "
            "num_encoder_layers=0 and num_decoder_layers=0."
        )
    constants = dict.fromkeys(
        ("encoder_alpha", "encoder_beta", "decoder_alpha", "decoder_beta")
    )
    if n and m:
        constants["encoder_alpha"] = 0.81 * (n**4 * m) ** (1 / 16)
        constants["encoder_beta"] = 0.87 * (n**4 * m) ** (-1 / 16)
        constants["decoder_alpha"] = (3 * m) ** (1 / 4)
        constants["decoder_beta"] = (12 * m) ** (-1 / 4)
    else:
        side, layers = ("encoder", n) if n else ("decoder", m)
        constants[f"{side}_alpha"] = (2 * layers) ** (1 / 4)
        constants[f"{side}_beta"] = (8 * layers) ** (-1 / 4)
    return constants


def deepnorm_initializer(beta, seed=None):
    """Xavier-normal initializer scaled by DeepNet's `beta`.

    Draws from an untruncated normal with standard deviation
    `beta * sqrt(2 / (fan_in + fan_out))`, which DeepNet uses for the value,
    output-projection and feed-forward kernels.

    Args:
        beta: float. Gain from `deepnorm_constants`.
        seed: optional int. Random seed.

    Returns:
        A `keras.initializers.VarianceScaling` instance.

    Example:

    ```python
    beta = keras_transformer.layers.deepnorm_constants(6, 6)["encoder_beta"]
    initializer = keras_transformer.layers.deepnorm_initializer(beta)
    ```

    References:
        - [Wang et al., 2022](https://arxiv.org/abs/2203.00555)
    """
    beta = validation.check_positive_float("beta", beta)
    return keras.initializers.VarianceScaling(
        scale=beta**2,
        mode="fan_avg",
        distribution="untruncated_normal",
        seed=seed,
    )


@keras.saving.register_keras_serializable(package="keras_transformer")
class Residual(keras.layers.Layer):
    """Residual connection around a layer, with configurable normalisation.

    Wraps any Keras layer `f` (attention, feed-forward, a plain `Dense`) and
    combines it with its input according to `norm_placement`:

    - `"post"`: `norm(x + drop(f(x)))` (original Transformer).
    - `"pre"`: `x + drop(f(norm(x)))`.
    - `"sandwich"`: `x + output_norm(drop(f(norm(x))))`.
    - `"deepnorm"`: `norm(alpha * x + drop(f(x)))` (DeepNet).
    - `"rezero"`: `x + a * drop(f(x))` with a trainable scalar `a`
      (`rezero_scale`) that starts at 0, so the block starts as the
      identity; it has no norm, so `norm_type` and `epsilon` are unused.
      One scalar per `Residual`, so per sublayer: the ReZero paper and its
      authors' code use one per layer (shared by its sublayers).

    With `"pre"` and `"sandwich"` the residual stream is never normalised;
    a stack of such blocks needs a final norm (see `needs_final_norm`).

    Only `inputs` goes through the norm; further positional and keyword
    arguments go to the sublayer unchanged (for example the encoder output
    of cross-attention). If the sublayer returns a tuple or list, the
    residual applies to its first element and the other elements are
    returned after it unchanged, as a tuple. The sublayer's main output is
    cast to this layer's compute dtype before the sum.

    Args:
        sublayer: `keras.layers.Layer`. The layer `f`; its first output must
            have the shape of `inputs`. It builds on the first call.
        norm_placement: str. One of `"post"`, `"pre"`, `"sandwich"`,
            `"deepnorm"`, `"rezero"`. Defaults to `"post"`.
        norm_type: str. `"layer_norm"` or `"rms_norm"`. Defaults to
            `"layer_norm"`.
        epsilon: float. Epsilon of the norms. Defaults to `1e-5`.
        dropout: float. Dropout rate on the sublayer output. Defaults to
            `0.0`.
        deepnorm_alpha: float. Scale of `x` with `"deepnorm"` (see
            `deepnorm_constants`); must stay `1.0` for other placements.
            Defaults to `1.0`.
        **kwargs: other keyword arguments passed to `keras.layers.Layer`,
            including `name` and `dtype`.

    Call arguments:
        inputs: float tensor of shape `(..., hidden_dim)`, the residual
            stream.
        *args: further tensors passed positionally to the sublayer.
        training: bool. Whether dropout is active; passed on to the
            sublayer.
        **kwargs: passed to the sublayer. Keras does not allow tensors and
            non-tensors to be mixed here, so pass extra tensors through
            `*args` when a flag is also given.

    Returns:
        A tensor of the shape of `inputs`, or a tuple whose first element is
        that tensor when the sublayer returns several outputs.

    Example:

    ```python
    block = keras_transformer.layers.Residual(
        keras_transformer.layers.FeedForward(64), norm_placement="pre"
    )
    outputs = block(np.random.rand(2, 8, 16).astype("float32"))  # (2, 8, 16)
    ```

    References:
        - [Vaswani et al., 2017](https://arxiv.org/abs/1706.03762) (post)
        - [Xiong et al., 2020](https://arxiv.org/abs/2002.04745) (pre)
        - [Ding et al., 2021](https://arxiv.org/abs/2105.13290) (sandwich)
        - [Wang et al., 2022](https://arxiv.org/abs/2203.00555) (deepnorm)
        - [Bachlechner et al., 2020](https://arxiv.org/abs/2003.04887)
          (rezero)
    """

    def __init__(
        self,
        sublayer,
        norm_placement="post",
        norm_type="layer_norm",
        epsilon=1e-5,
        dropout=0.0,
        deepnorm_alpha=1.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(sublayer, keras.layers.Layer):
            raise ValueError(
                "Received an invalid value for argument sublayer, expected a "
                "keras.layers.Layer instance. Received: "
                f"sublayer={sublayer!r} of type {type(sublayer).__name__}"
            )
        self.sublayer = sublayer
        self.norm_placement = validation.check_choice(
            "norm_placement", norm_placement, NORM_PLACEMENTS
        )
        self.norm_type = validation.check_choice("norm_type", norm_type, NORM_TYPES)
        self.epsilon = validation.check_positive_float("epsilon", epsilon)
        self.dropout = validation.check_rate("dropout", dropout)
        self.deepnorm_alpha = validation.check_positive_float(
            "deepnorm_alpha", deepnorm_alpha
        )
        if self.norm_placement != "deepnorm" and self.deepnorm_alpha != 1.0:
            raise ValueError(
                "Received an invalid value for argument deepnorm_alpha, "
                "expected 1.0 unless norm_placement='deepnorm'. Received: "
                f"deepnorm_alpha={deepnorm_alpha!r} with "
                f"norm_placement={norm_placement!r}"
            )
        self.dropout_layer = Dropout(
            self.dropout, name="dropout", dtype=self.dtype_policy
        )

    def _make_norm(self, name, input_shape):
        norm = make_normalization(self.norm_type, self.epsilon, name, self.dtype_policy)
        norm.build(input_shape)
        return norm

    def build(self, input_shape):
        if self.norm_placement == "rezero":
            self.rezero_scale = self.add_weight(
                name="rezero_scale", shape=(), initializer="zeros"
            )
            return
        validation.check_last_dim(self.name, "inputs", input_shape, None)
        self.norm = self._make_norm("norm", input_shape)
        if self.norm_placement == "sandwich":
            self.output_norm = self._make_norm("output_norm", input_shape)

    def call(self, inputs, *args, training=None, **kwargs):
        outputs = self.sublayer(
            self.normalize_inputs(inputs), *args, training=training, **kwargs
        )
        several_outputs = isinstance(outputs, (tuple, list))
        main_output = outputs[0] if several_outputs else outputs
        result = self.add_residual(inputs, main_output, training=training)
        return (result, *outputs[1:]) if several_outputs else result

    def normalize_inputs(self, inputs):
        """The sublayer's input: `norm(x)` for pre-norm and sandwich, else `x`.

        With `add_residual`, this lets a block call its sublayer itself, with
        the sublayer's own mix of tensor and flag arguments (Keras refuses
        tensors mixed with flags in a wrapper's `**kwargs`).
        """
        if self.norm_placement in _UNNORMALISED_STREAM:
            return self.norm(inputs)
        return inputs

    def add_residual(
        self, inputs, sublayer_outputs, training=None, dropout_seed=None
    ):
        """Combines the residual stream `inputs` with the sublayer's output.

        `dropout_seed` (from `stateless_dropout.draw_dropout_seed`) fixes the
        dropout mask, for a block that recomputes this call in its backward
        pass.
        """
        placement = self.norm_placement
        branch = seeded_dropout(
            self.dropout_layer,
            ops.cast(sublayer_outputs, self.compute_dtype),
            training=training,
            seed=dropout_seed,
        )
        if placement == "post":
            return self.norm(inputs + branch)
        if placement == "pre":
            return inputs + branch
        if placement == "sandwich":
            return inputs + self.output_norm(branch)
        if placement == "deepnorm":
            return self.norm(self.deepnorm_alpha * inputs + branch)
        return inputs + self.rezero_scale * branch

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "sublayer": keras.saving.serialize_keras_object(self.sublayer),
                "norm_placement": self.norm_placement,
                "norm_type": self.norm_type,
                "epsilon": self.epsilon,
                "dropout": self.dropout,
                "deepnorm_alpha": self.deepnorm_alpha,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["sublayer"] = keras.saving.deserialize_keras_object(config["sublayer"])
        return super().from_config(config)
