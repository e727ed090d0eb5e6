"""LoRA, rsLoRA and DoRA adapters on dense projections.

`LoRADense` is the projection every layer of this library uses, so a low-rank
adapter can be switched on for any of them after the fact. The model-level
functions below find `LoRADense` layers by *layer path*: the layer names from
the model down, joined by "/" (for example
"encoder_block_0/self_attention/query"). The path is built by walking the
layer tree, not read from `Layer.path`, because Keras records `Layer.path` at
build time and a reloaded model can report a shorter one.

Adapter files written by `save_lora_weights` are NumPy `.npz` archives: one
array per adapter variable under the key "<layer path>/<variable name>", plus
a JSON string under "__lora_metadata__" holding each adapter's settings, so
`load_lora_weights` can recreate the adapters on a fresh base model.
"""

import fnmatch
import json
import math
import os
import zipfile

import keras
import numpy as np
from keras import ops

from keras_transformer import _compat, _files, validation
from keras_transformer.layers.dropout import Dropout

# A DoRA column norm below this counts as zero, so an all-zero base column
# gives a zero output column instead of 0 / 0.
_NORM_EPSILON = 1e-12

_METADATA_KEY = "__lora_metadata__"
_FILE_FORMAT = "keras_transformer.lora_weights"
_FILE_VERSION = 1

# Settings that change what an adapter computes; dropout only acts in training.
_OUTPUT_SETTINGS = ("rank", "alpha", "use_rslora", "use_dora")
# Every setting an adapter is saved with.
_SETTINGS = (*_OUTPUT_SETTINGS, "lora_dropout")
# Layout of the "lora_state" entry a layer writes next to its variables.
_STATE_FIELDS = ("merged", "rank", "alpha", "lora_dropout", "use_rslora", "use_dora")
# Query and value projections of every attention layer (Hu et al.'s choice).
DEFAULT_TARGET_LAYERS = ("*query", "*value")


def _check_adapter_arguments(rank, alpha, lora_dropout, use_rslora, use_dora):
    """Validates adapter settings and returns them normalised as a dict."""
    rank = validation.check_positive_int("rank", rank)
    alpha = validation.check_positive_float("alpha", alpha, allow_none=True)
    use_rslora = validation.check_bool("use_rslora", use_rslora)
    use_dora = validation.check_bool("use_dora", use_dora)
    return {
        "rank": rank,
        "alpha": float(rank) if alpha is None else alpha,
        "lora_dropout": validation.check_rate("lora_dropout", lora_dropout),
        "use_rslora": bool(use_rslora),
        "use_dora": bool(use_dora),
    }


def _own_copy(initializer):
    """A private instance of `initializer`.

    A Keras initializer instance draws the same values every time it is
    called, so projections sharing one (query and key, or the gate and up
    projections) would start with identical kernels. Keras' own
    MultiHeadAttention clones its initializers for the same reason.
    """
    initializer = keras.initializers.get(initializer)
    return initializer.__class__.from_config(initializer.get_config())


def _column_norms(kernel):
    """L2 norm of each output unit's weights: over the d_in axis."""
    return ops.sqrt(ops.sum(ops.square(kernel), axis=0))


@keras.saving.register_keras_serializable(package="keras_transformer")
class LoRADense(keras.layers.Layer):
    """A dense projection `x @ kernel + bias` that can carry a LoRA adapter.

    Without `rank` this is a plain dense layer. With `rank` (or after
    `enable_lora`) the frozen base kernel `W0` of shape `(d_in, units)` gets a
    trainable low-rank update `scale * A @ B`, with `A` of shape `(d_in, rank)`
    initialised he-uniform and `B` of shape `(rank, units)` initialised to
    zeros, so a fresh adapter leaves the outputs unchanged. `scale` is
    `alpha / rank`, or `alpha / sqrt(rank)` with `use_rslora`.

    With `use_dora` the effective kernel is `m * V / ||V||` with
    `V = W0 + scale * A @ B`, the norm taken per output unit (over `d_in`) and
    the trainable magnitude `m` initialised to the column norms of `W0`.
    `lora_dropout` drops inputs of the adapter branch only; with DoRA the
    output is `(x @ W0 + scale * dropout(x) @ A @ B) * m / ||V|| + bias`.

    `merge()` folds the adapter into the kernel for inference and `unmerge()`
    takes it out again (DoRA keeps the merge-time column norms for that).
    While merged the adapter is not applied separately, so unmerge before
    training. Enabling, merging and unmerging change the computation a
    compiled model traced; use the model-level `enable_lora`, `merge_lora`
    and `unmerge_lora`, which make the model retrace, or compile again.

    `.keras` and weights files keep the base kernel, the adapter, its
    settings and its merged state: unlike Keras' `Dense`, nothing is merged on
    save or zeroed on load, and a layer re-created without `rank` (for
    example by a parent layer) gets its adapter back when the weights load.

    Args:
        units: int. Output feature size.
        activation: optional activation applied to the output.
        use_bias: bool. Whether to add a bias.
        kernel_initializer: initializer for the base kernel.
        bias_initializer: initializer for the bias.
        rank: optional int. Rank of the adapter, created at build time.
            `None` gives a plain dense layer.
        alpha: optional positive float. Adapter scale numerator; defaults to
            `rank`. Needs `rank`.
        lora_dropout: float in [0, 1). Dropout rate on the adapter branch's
            inputs. Needs `rank`.
        use_rslora: bool. Scale by `alpha / sqrt(rank)` (rank-stabilised
            LoRA) instead of `alpha / rank`. Needs `rank`.
        use_dora: bool. Weight-decomposed adapter (DoRA) with a trainable
            per-unit magnitude. Needs `rank`.
        **kwargs: other keyword arguments passed to `keras.layers.Layer`.

    Call arguments:
        inputs: float tensor of shape `(..., d_in)`.
        training: optional bool. Whether the adapter dropout is active.

    Example:

    ```python
    layer = LoRADense(16)
    layer.build((None, 8))
    layer.enable_lora(rank=4, alpha=8.0)
    outputs = layer(np.ones((2, 8), "float32"))  # equal to the base layer's
    layer.merge()  # kernel now holds W0 + 2.0 * A @ B
    ```

    References:
        - [Hu et al., 2021](https://arxiv.org/abs/2106.09685): LoRA.
        - [Kalajdzievski, 2023](https://arxiv.org/abs/2312.03732): rsLoRA.
        - [Liu et al., 2024](https://arxiv.org/abs/2402.09353): DoRA.
    """

    def __init__(
        self,
        units,
        activation=None,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        rank=None,
        alpha=None,
        lora_dropout=0.0,
        use_rslora=False,
        use_dora=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.units = validation.check_positive_int("units", units)
        self.activation = keras.activations.get(activation)
        self.use_bias = validation.check_bool("use_bias", use_bias)
        self.kernel_initializer = _own_copy(kernel_initializer)
        self.bias_initializer = _own_copy(bias_initializer)
        if rank is None:
            adapter_only = {
                "alpha": (alpha, None),
                "lora_dropout": (lora_dropout, 0.0),
                "use_rslora": (use_rslora, False),
                "use_dora": (use_dora, False),
            }
            for name, (value, default) in adapter_only.items():
                if value != default:
                    raise ValueError(
                        f"Received {name}={value!r} without rank. {name} "
                        "configures a LoRA adapter; pass rank= as well, or "
                        f"leave {name} at its default for a plain dense layer."
                    )
            self._adapter_settings = None
        else:
            self._adapter_settings = _check_adapter_arguments(
                rank, alpha, lora_dropout, use_rslora, use_dora
            )
        self.lora_kernel_a = None
        self.lora_kernel_b = None
        self.lora_magnitude = None
        self.lora_merged_norm = None
        self.lora_dropout_layer = None
        self._merged = False
        self._attached_adapter = None

    def build(self, input_shape):
        input_dim = validation.check_last_dim(
            self.name, "inputs", input_shape, None
        )
        if self._adapter_settings is not None:
            self._check_rank_fits(self.rank, input_dim)
        # Variables are read in float32 and cast explicitly in `call`, so
        # DoRA's column norms are computed in float32 under mixed precision.
        self.kernel = self.add_weight(
            name="kernel",
            shape=(input_dim, self.units),
            initializer=self.kernel_initializer,
            autocast=False,
        )
        self.bias = (
            self.add_weight(
                name="bias",
                shape=(self.units,),
                initializer=self.bias_initializer,
                autocast=False,
            )
            if self.use_bias
            else None
        )
        if self._adapter_settings is not None:
            self._create_adapter(input_shape)

    def enable_lora(
        self, rank, alpha=None, lora_dropout=0.0, use_rslora=False, use_dora=False
    ):
        """Adds a fresh adapter to this built layer and freezes kernel and bias.

        Args:
            rank: int. Rank of the adapter.
            alpha: optional positive float. Scale numerator; defaults to rank.
            lora_dropout: float in [0, 1). Dropout on the adapter branch.
            use_rslora: bool. Scale by `alpha / sqrt(rank)`.
            use_dora: bool. Weight-decomposed adapter with a magnitude vector.
        """
        if not self.built:
            raise ValueError(
                f"Cannot enable LoRA on layer '{self.name}' because it is not "
                "built yet, so its kernel shape is unknown. Call the layer on "
                "an input (or `layer.build(input_shape)`) first, or pass "
                "rank= to the constructor to create the adapter at build time."
            )
        if self.lora_enabled:
            raise ValueError(
                f"Layer '{self.name}' already has a LoRA adapter "
                f"(rank={self.rank}). An adapter can be enabled once per layer; "
                "to change it, create the layer again with the new settings."
            )
        settings = _check_adapter_arguments(
            rank, alpha, lora_dropout, use_rslora, use_dora
        )
        self._check_rank_fits(settings["rank"], self.kernel.shape[0])
        self._adapter_settings = settings
        with _compat.unlocked_tracker(self):
            self._create_adapter((None, self.kernel.shape[0]))

    def _check_rank_fits(self, rank, input_dim):
        """Refuses a rank above the kernel's: `A @ B` cannot exceed the rank
        of a `(input_dim, units)` matrix, so the extra parameters would be
        wasted."""
        largest = min(int(input_dim), self.units)
        if rank > largest:
            raise ValueError(
                "Received an invalid value for argument rank, expected at most "
                f"min(input features, units) = min({int(input_dim)}, "
                f"{self.units}) = {largest} for layer '{self.name}' (the "
                f"adapter's update has rank at most {largest}). Received: "
                f"rank={rank}. Pass rank <= {largest}."
            )

    def _create_adapter(self, input_shape):
        input_dim, units = self.kernel.shape
        self.lora_kernel_a = self.add_weight(
            name="lora_kernel_a",
            shape=(input_dim, self.rank),
            initializer="he_uniform",
            autocast=False,
        )
        self.lora_kernel_b = self.add_weight(
            name="lora_kernel_b",
            shape=(self.rank, units),
            initializer="zeros",
            autocast=False,
        )
        if self.use_dora:
            self.lora_magnitude = self.add_weight(
                name="lora_magnitude",
                shape=(units,),
                initializer="ones",
                autocast=False,
            )
            self.lora_magnitude.assign(_column_norms(self.kernel))
            self.lora_merged_norm = self.add_weight(
                name="lora_merged_norm",
                shape=(units,),
                initializer="ones",
                trainable=False,
                autocast=False,
            )
        if self.lora_dropout > 0:
            self.lora_dropout_layer = Dropout(
                self.lora_dropout, name="lora_dropout", dtype=self.dtype_policy
            )
            self.lora_dropout_layer.build(input_shape)
        self.kernel.trainable = False
        if self.bias is not None:
            self.bias.trainable = False

    def _setting(self, name, default):
        if self._adapter_settings is None:
            return default
        return self._adapter_settings[name]

    @property
    def rank(self):
        return self._setting("rank", None)

    @property
    def alpha(self):
        return self._setting("alpha", None)

    @property
    def lora_dropout(self):
        return self._setting("lora_dropout", 0.0)

    @property
    def use_rslora(self):
        return self._setting("use_rslora", False)

    @property
    def use_dora(self):
        return self._setting("use_dora", False)

    @property
    def lora_enabled(self):
        """Whether the layer carries an adapter (created once built)."""
        return self.lora_kernel_a is not None

    @property
    def merged(self):
        """Whether the adapter is currently folded into the kernel."""
        return self._merged

    @property
    def lora_scale(self):
        """`alpha / rank` (or `alpha / sqrt(rank)`); None without an adapter."""
        if not self.lora_enabled:
            return None
        return self.alpha / (math.sqrt(self.rank) if self.use_rslora else self.rank)

    def _adapter_variables(self):
        """The trainable adapter variables by their saved name."""
        variables = {
            "lora_kernel_a": self.lora_kernel_a,
            "lora_kernel_b": self.lora_kernel_b,
            "lora_magnitude": self.lora_magnitude,
        }
        return {name: v for name, v in variables.items() if v is not None}

    def _updated_kernel(self):
        """`W0 + scale * A @ B` in float32 (the kernel must be unmerged)."""
        delta = ops.matmul(self.lora_kernel_a, self.lora_kernel_b)
        return ops.add(self.kernel, ops.multiply(delta, self.lora_scale))

    def _dora_ratio(self, column_norms):
        return ops.divide(
            self.lora_magnitude, ops.maximum(column_norms, _NORM_EPSILON)
        )

    def call(self, inputs, training=None):
        outputs = ops.matmul(inputs, ops.cast(self.kernel, self.compute_dtype))
        if self.lora_enabled and not self._merged:
            branch_inputs = inputs
            if self.lora_dropout_layer is not None:
                branch_inputs = self.lora_dropout_layer(inputs, training=training)
            outputs = ops.add(
                outputs,
                self._low_rank_update(
                    branch_inputs,
                    self.lora_kernel_a,
                    self.lora_kernel_b,
                    self.lora_scale,
                ),
            )
            if self.use_dora:
                ratio = self._dora_ratio(_column_norms(self._updated_kernel()))
                outputs = ops.multiply(outputs, ops.cast(ratio, self.compute_dtype))
        attached = self._attached_adapter
        if attached is not None:
            outputs = ops.add(
                outputs,
                self._low_rank_update(
                    inputs, attached.kernel_a, attached.kernel_b, attached.scale
                ),
            )
        if self.bias is not None:
            outputs = ops.add(outputs, ops.cast(self.bias, self.compute_dtype))
        return self.activation(outputs)

    def _low_rank_update(self, inputs, kernel_a, kernel_b, scale):
        """`scale * inputs @ A @ B` in the compute dtype."""
        branch = ops.matmul(
            ops.matmul(inputs, ops.cast(kernel_a, self.compute_dtype)),
            ops.cast(kernel_b, self.compute_dtype),
        )
        return ops.multiply(branch, scale)

    @property
    def attached_adapter(self):
        """The adapter held outside the layer that `attach` added, or None."""
        return self._attached_adapter

    def attach(self, adapter):
        """Adds an adapter held outside the layer to its outputs (None: none).

        For low-rank updates whose variables live elsewhere, such as the
        named adapters of a `Translator`
        (`keras_transformer.translation.adapters`), which keeps several per
        layer and attaches the active one. `adapter`
        has `kernel_a` `(d_in, rank)`, `kernel_b` `(rank, units)` and a float
        `scale`; the output gains `scale * inputs @ kernel_a @ kernel_b`.
        Nothing is saved with the layer, and functions traced before the
        call keep the adapter they were traced with (trace again).

        Args:
            adapter: the adapter, or None to compute the layer alone again.
        """
        if adapter is not None and self.lora_enabled:
            raise ValueError(
                f"Layer '{self.name}' has its own LoRA adapter (enable_lora), "
                "so another adapter cannot be attached to it. Use one kind of "
                "adapter per layer."
            )
        self._attached_adapter = adapter

    def _check_merge_state(self, merging):
        action = "merge" if merging else "unmerge"
        if not self.lora_enabled:
            raise ValueError(
                f"Layer '{self.name}' has no LoRA adapter to {action}. Call "
                "enable_lora(rank) first."
            )
        if self._merged == merging:
            state = "already merged" if merging else "not merged"
            raise ValueError(
                f"The LoRA adapter of layer '{self.name}' is {state}, so there "
                f"is nothing to {action}."
            )
        if merging and self.use_dora:
            dead_units = int(np.sum(ops.convert_to_numpy(self.lora_magnitude) == 0))
            if dead_units:
                raise ValueError(
                    f"Cannot merge the DoRA adapter of layer '{self.name}' "
                    f"reversibly: {dead_units} output unit(s) have magnitude 0, "
                    "so unmerge() could not recover their base weights. Keep "
                    "the adapter unmerged."
                )

    def merge(self):
        """Folds the adapter into the kernel, so calls skip the branch."""
        self._check_merge_state(merging=True)
        kernel = self._updated_kernel()
        if self.use_dora:
            column_norms = _column_norms(kernel)
            self.lora_merged_norm.assign(column_norms)
            kernel = ops.multiply(kernel, self._dora_ratio(column_norms))
        self.kernel.assign(kernel)
        self._merged = True

    def unmerge(self):
        """Restores the base kernel that `merge()` replaced."""
        self._check_merge_state(merging=False)
        kernel = ops.convert_to_tensor(self.kernel)
        if self.use_dora:
            kernel = ops.divide(kernel, self._dora_ratio(self.lora_merged_norm))
        delta = ops.matmul(self.lora_kernel_a, self.lora_kernel_b)
        self.kernel.assign(ops.subtract(kernel, ops.multiply(delta, self.lora_scale)))
        self._merged = False

    def _saved_variables(self):
        variables = {"kernel": self.kernel, "bias": self.bias}
        variables.update(self._adapter_variables())
        variables["lora_merged_norm"] = self.lora_merged_norm
        return {name: v for name, v in variables.items() if v is not None}

    def save_own_variables(self, store):
        # Named entries keep loading independent of the order in which the
        # adapter variables were created (at build or by enable_lora later).
        # The adapter settings travel with the weights because a parent layer
        # may re-create this layer without rank= when a model is loaded.
        if not self.built:
            return
        for name, variable in self._saved_variables().items():
            store[name] = variable
        if self.lora_enabled:
            state = {"merged": self._merged, **self._adapter_settings}
            store["lora_state"] = np.array(
                [float(state[field]) for field in _STATE_FIELDS], dtype="float64"
            )

    def load_own_variables(self, store):
        received = set(store.keys())
        saved_state = None
        if self.built and "lora_state" in received:
            saved_state = dict(
                zip(_STATE_FIELDS, np.asarray(store["lora_state"]).tolist())
            )
            self._adopt_saved_adapter(saved_state)
        variables = self._saved_variables() if self.built else {}
        expected = set(variables)
        if self.lora_enabled:
            expected.add("lora_state")
        if received != expected:
            raise ValueError(self._load_mismatch_message(expected, received))
        for name, variable in variables.items():
            assign_saved(variable, store[name], f"Layer '{self.name}' cannot load '{name}'")
        if saved_state is not None:
            self._merged = bool(saved_state["merged"])

    def _adopt_saved_adapter(self, saved_state):
        """Enables the saved adapter, or checks that the existing one matches."""
        saved = {
            "rank": int(saved_state["rank"]),
            "alpha": saved_state["alpha"],
            "lora_dropout": saved_state["lora_dropout"],
            "use_rslora": bool(saved_state["use_rslora"]),
            "use_dora": bool(saved_state["use_dora"]),
        }
        if not self.lora_enabled:
            self.enable_lora(**saved)
            return
        current = {key: self._adapter_settings[key] for key in _OUTPUT_SETTINGS}
        saved = {key: saved[key] for key in _OUTPUT_SETTINGS}
        if current != saved:
            raise ValueError(
                f"Layer '{self.name}' cannot load its weights: its LoRA adapter "
                f"has {current}, but the saved adapter has {saved}. Create the "
                "layer with the saved settings (or without an adapter)."
            )

    def _load_mismatch_message(self, expected, received):
        message = (
            f"Layer '{self.name}' cannot load its weights: the file has "
            f"{sorted(received)} but the layer expects {sorted(expected)}."
        )
        if not self.built:
            return message + " Build the layer (call it on an input) first."
        if self.lora_enabled and "lora_state" not in received:
            return message + (
                " The weights were saved without a LoRA adapter; load them "
                "before enable_lora(), or load adapters with load_lora_weights()."
            )
        return message

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "units": self.units,
                "activation": keras.activations.serialize(self.activation),
                "use_bias": self.use_bias,
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
                "bias_initializer": keras.initializers.serialize(
                    self.bias_initializer
                ),
                "rank": self.rank,
                "alpha": self.alpha,
                "lora_dropout": self.lora_dropout,
                "use_rslora": self.use_rslora,
                "use_dora": self.use_dora,
            }
        )
        return config


def assign_saved(variable, value, where):
    """Assigns a saved array to `variable`; a `ValueError` starting with
    `where` when the shapes differ."""
    value = np.asarray(value)
    if value.shape != tuple(variable.shape):
        raise ValueError(
            f"{where}: expected shape {tuple(variable.shape)}, received {value.shape}."
        )
    variable.assign(value)


def _lora_dense_layers(model):
    """Maps the layer path of every `LoRADense` under `model` to the layer."""
    found = {}
    visited = set()

    def visit(layer, prefix):
        for child in _compat.child_layers(layer):
            if id(child) in visited:
                continue
            visited.add(id(child))
            path = prefix + child.name
            if isinstance(child, LoRADense):
                if path in found:
                    raise ValueError(
                        f"Two LoRADense layers of model '{model.name}' share "
                        f"the layer path '{path}', so adapters cannot be told "
                        "apart. Give sibling layers distinct names."
                    )
                found[path] = child
            visit(child, path + "/")

    visit(model, "")
    return found


def _adapted_layers(model):
    return {
        path: layer
        for path, layer in _lora_dense_layers(model).items()
        if layer.lora_enabled
    }


def _available_paths(layers_by_path):
    return ", ".join(repr(path) for path in layers_by_path) or "none"


def _freeze_all_but_adapters(model):
    adapter_ids = {
        id(variable)
        for layer in _adapted_layers(model).values()
        for variable in layer._adapter_variables().values()
    }
    for variable in model.weights:
        if id(variable) not in adapter_ids:
            variable.trainable = False


def _forget_traced_functions(model):
    # Traced train/test/predict functions baked in the old forward pass.
    for attribute in ("train_function", "test_function", "predict_function"):
        if getattr(model, attribute, None) is not None:
            setattr(model, attribute, None)


def enable_lora(
    model,
    target_layers=DEFAULT_TARGET_LAYERS,
    rank=8,
    alpha=None,
    lora_dropout=0.0,
    use_rslora=False,
    use_dora=False,
    freeze_base=True,
):
    """Adds LoRA adapters to the `LoRADense` layers whose path matches.

    Layer paths are the layer names from the model down joined by "/", e.g.
    "encoder_block_0/self_attention/query"; patterns use `fnmatch` rules
    (case-sensitive; "*" also matches "/"). Call this before `compile`, or
    compile again, so the optimizer sees the new trainable variables.

    Args:
        model: built `keras.Model` (or layer) containing `LoRADense` layers.
        target_layers: str or sequence of str. Layer path patterns.
        rank, alpha, lora_dropout, use_rslora, use_dora: adapter settings, as
            in `LoRADense.enable_lora`.
        freeze_base: bool. Make every variable of the model other than the
            adapters non-trainable, so `model.trainable_weights` are exactly
            the adapters. Variable trainability is not saved in `.keras`
            files; after loading, only the adapted layers' kernels stay frozen.

    Returns:
        The list of adapted layer paths.
    """
    settings = _check_adapter_arguments(
        rank, alpha, lora_dropout, use_rslora, use_dora
    )
    matched = match_layers(model, target_layers)
    for path, layer in matched.items():
        if layer.attached_adapter is not None:
            raise ValueError(
                f"Layer '{path}' has a named adapter attached. Use one kind "
                "of adapter per layer."
            )
    # Every layer checked first so an error never leaves the model half adapted.
    for layer in matched.values():
        layer._check_rank_fits(settings["rank"], layer.kernel.shape[0])
    for layer in matched.values():
        layer.enable_lora(**settings)
    if freeze_base:
        _freeze_all_but_adapters(model)
    _forget_traced_functions(model)
    return list(matched)


def match_layers(model, target_layers):
    """The built `LoRADense` layers without an adapter whose path matches.

    Args:
        model: a built model (or layer) containing `LoRADense` layers.
        target_layers: str or sequence of str. Layer path patterns, as in
            `enable_lora`.

    Returns:
        A dict of layer path -> `LoRADense`, in model order.
    """
    patterns = (target_layers,) if isinstance(target_layers, str) else target_layers
    if (
        not isinstance(patterns, (list, tuple))
        or not patterns
        or not all(isinstance(pattern, str) for pattern in patterns)
    ):
        raise ValueError(
            "Received an invalid value for argument target_layers, expected a "
            "layer path pattern or a non-empty list of them. Received: "
            f"target_layers={target_layers!r}"
        )
    layers_by_path = _lora_dense_layers(model)
    matched = {
        path: layer
        for path, layer in layers_by_path.items()
        if any(fnmatch.fnmatchcase(path, pattern) for pattern in patterns)
    }
    if not matched:
        raise ValueError(
            f"No LoRADense layer of model '{model.name}' matches "
            f"target_layers={list(patterns)}. Available LoRADense paths: "
            f"{_available_paths(layers_by_path)}."
        )
    for path, layer in matched.items():
        if layer.lora_enabled:
            raise ValueError(
                f"Layer '{path}' already has a LoRA adapter. Narrow "
                "target_layers to layers without one."
            )
        if not layer.built:
            raise ValueError(
                f"Layer '{path}' is not built yet. Build the model (call it on "
                "an input) before enabling LoRA."
            )
    return matched


def _change_merge_state(model, merge):
    adapted = _adapted_layers(model)
    if not adapted:
        raise ValueError(
            f"Model '{model.name}' has no LoRA adapters to "
            f"{'merge' if merge else 'unmerge'}. Call enable_lora(model, ...) first."
        )
    targets = {path: layer for path, layer in adapted.items() if layer.merged != merge}
    if not targets:
        raise ValueError(
            f"All LoRA adapters of model '{model.name}' are already "
            f"{'merged' if merge else 'unmerged'}."
        )
    # Check every layer first so an error never leaves the model half merged.
    for layer in targets.values():
        layer._check_merge_state(merging=merge)
    for layer in targets.values():
        layer.merge() if merge else layer.unmerge()
    _forget_traced_functions(model)
    return list(targets)


def merge_lora(model):
    """Merges every unmerged adapter of `model`; returns their layer paths."""
    return _change_merge_state(model, merge=True)


def unmerge_lora(model):
    """Unmerges every merged adapter of `model`; returns their layer paths."""
    return _change_merge_state(model, merge=False)


def save_lora_weights(model, filepath):
    """Writes the adapter weights of `model` to a `.npz` file.

    Only adapter variables are written, keyed by layer path, together with
    each adapter's settings. The file is written to a temporary file in the
    same folder and then moved into place, so an existing file is never lost
    or left half-written.

    Args:
        model: model with LoRA adapters (merged or not).
        filepath: str or path-like. Destination, conventionally `*.npz`.
    """
    filepath = os.fspath(filepath)
    adapted = _adapted_layers(model)
    if not adapted:
        raise ValueError(
            f"Model '{model.name}' has no LoRA adapters to save. Call "
            "enable_lora(model, ...) first."
        )
    _files.check_destination(filepath, "LoRA weights", "adapters.npz")
    arrays = {}
    for path, layer in adapted.items():
        for name, variable in layer._adapter_variables().items():
            arrays[f"{path}/{name}"] = ops.convert_to_numpy(variable)
    metadata = {
        "format": _FILE_FORMAT,
        "version": _FILE_VERSION,
        "adapters": {path: layer._adapter_settings for path, layer in adapted.items()},
    }
    write_npz(filepath, arrays, metadata, "LoRA weights")


def write_npz(filepath, arrays, metadata, what, metadata_key=_METADATA_KEY):
    """Writes `arrays` and a JSON `metadata` entry to an `.npz` file,
    atomically (`_files.atomic_write`): an existing file is never lost or
    left half-written."""
    arrays = {**arrays, metadata_key: np.array(json.dumps(metadata))}
    with _files.atomic_write(filepath, "wb", what) as file:
        np.savez(file, **arrays)


def read_npz(filepath, not_ours, file_format, version, metadata_key=_METADATA_KEY):
    """Reads an archive of `write_npz`: `(arrays, metadata)`, or a ValueError.

    Args:
        filepath: str. The file.
        not_ours: str. The start of every error message, e.g. "'x.npz' is not
            a LoRA weights file written by save_lora_weights".
        file_format: str. The "format" the metadata must name.
        version: int. The "version" it must have.
        metadata_key: str. The entry holding the JSON metadata.

    Returns:
        A dict of the floating-point arrays by key, and the metadata dict.
    """
    try:
        archive = np.load(filepath, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise ValueError(f"{not_ours}: {error}") from error
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"{not_ours}: it holds a single array.")
    with archive:
        arrays = {key: archive[key] for key in archive.files}
    metadata = arrays.pop(metadata_key, None)
    if metadata is None:
        raise ValueError(f"{not_ours}: it has no '{metadata_key}' entry.")
    try:
        metadata = json.loads(metadata.item()) if metadata.dtype.kind == "U" else None
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{not_ours}: its metadata does not parse ({error})."
        ) from None
    if not isinstance(metadata, dict):
        raise ValueError(f"{not_ours}: its metadata is not a JSON object.")
    found = (metadata.get("format"), metadata.get("version"))
    if found != (file_format, version):
        raise ValueError(
            f"{not_ours}: expected format {file_format!r} version "
            f"{version}, found {found[0]!r} version {found[1]!r}."
        )
    for key, array in arrays.items():
        if array.dtype.kind != "f":
            raise ValueError(
                f"{not_ours}: {key!r} holds {array.dtype} values, expected "
                "floating-point weights."
            )
    return arrays, metadata


def _read_lora_file(filepath):
    if not os.path.isfile(filepath):
        raise ValueError(f"LoRA weights file not found: {filepath!r}.")
    not_ours = (
        f"{filepath!r} is not a LoRA weights file written by save_lora_weights"
    )
    arrays, metadata = read_npz(filepath, not_ours, _FILE_FORMAT, _FILE_VERSION)
    adapters = metadata.get("adapters")
    if not isinstance(adapters, dict):
        raise ValueError(f"{not_ours}: its metadata lists no adapters.")
    for path, settings in adapters.items():
        try:
            if not isinstance(settings, dict) or set(settings) != set(_SETTINGS):
                raise ValueError(f"expected the settings {list(_SETTINGS)}")
            adapters[path] = _check_adapter_arguments(**settings)
        except ValueError as error:
            raise ValueError(
                f"{not_ours}: the settings of the adapter {path!r} are invalid "
                f"({error}). Received: {settings!r}"
            ) from None
    return arrays, adapters


def _expected_adapter_shapes(layer, settings):
    input_dim, units = layer.kernel.shape
    shapes = {
        "lora_kernel_a": (input_dim, settings["rank"]),
        "lora_kernel_b": (settings["rank"], units),
    }
    if settings["use_dora"]:
        shapes["lora_magnitude"] = (units,)
    return shapes


def load_lora_weights(model, filepath, freeze_base=True):
    """Loads adapters written by `save_lora_weights` into `model`.

    Layers of `model` at the saved paths get an adapter with the saved
    settings if they have none yet (so a fresh base model works); layers that
    already have one must have the same rank, alpha, use_rslora and use_dora
    and must not be merged. Everything is checked before any weight changes.

    Args:
        model: built model with the same base architecture.
        filepath: str or path-like. A file written by `save_lora_weights`.
        freeze_base: bool. As in `enable_lora`.

    Returns:
        The list of layer paths that received adapter weights.
    """
    filepath = os.fspath(filepath)
    arrays, adapters = _read_lora_file(filepath)
    layers_by_path = _lora_dense_layers(model)
    unknown = [path for path in adapters if path not in layers_by_path]
    if unknown:
        raise ValueError(
            f"The LoRA weights file {filepath!r} has adapters for layer paths "
            f"that are not LoRADense layers of model '{model.name}': {unknown}. "
            f"Available LoRADense paths: {_available_paths(layers_by_path)}."
        )
    unsaved = [
        path
        for path, layer in layers_by_path.items()
        if layer.lora_enabled and path not in adapters
    ]
    if unsaved:
        raise ValueError(
            f"Model '{model.name}' has LoRA adapters on {unsaved}, which the "
            f"file {filepath!r} has no weights for. Load into a model without "
            "those adapters."
        )
    expected_keys = set()
    for path, settings in adapters.items():
        layer = layers_by_path[path]
        if not layer.built:
            raise ValueError(
                f"Layer '{path}' is not built yet. Build the model (call it on "
                "an input) before loading LoRA weights."
            )
        if layer.lora_enabled:
            current = {key: layer._adapter_settings[key] for key in _OUTPUT_SETTINGS}
            saved = {key: settings[key] for key in _OUTPUT_SETTINGS}
            if current != saved:
                raise ValueError(
                    f"Layer '{path}' already has a LoRA adapter with {current}, "
                    f"but the file's adapter has {saved}."
                )
            if layer.merged:
                raise ValueError(
                    f"Layer '{path}' has a merged LoRA adapter. Call "
                    "unmerge_lora(model) before loading adapter weights."
                )
        for name, shape in _expected_adapter_shapes(layer, settings).items():
            key = f"{path}/{name}"
            expected_keys.add(key)
            if key not in arrays:
                raise ValueError(f"The LoRA weights file {filepath!r} has no '{key}'.")
            if arrays[key].shape != shape:
                raise ValueError(
                    f"The LoRA weights file {filepath!r} does not fit model "
                    f"'{model.name}': shape mismatch for layer '{path}' ({name}): "
                    f"expected {shape} from its kernel {tuple(layer.kernel.shape)} and "
                    f"rank {settings['rank']}, received {arrays[key].shape}."
                )
    extra = sorted(set(arrays) - expected_keys)
    if extra:
        raise ValueError(
            f"The LoRA weights file {filepath!r} has entries no adapter "
            f"expects: {extra}."
        )
    for path, settings in adapters.items():
        layer = layers_by_path[path]
        if not layer.lora_enabled:
            layer.enable_lora(**settings)
        for name, variable in layer._adapter_variables().items():
            variable.assign(arrays[f"{path}/{name}"])
    if freeze_base:
        _freeze_all_but_adapters(model)
    _forget_traced_functions(model)
    return list(adapters)
